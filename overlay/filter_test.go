package overlay

import (
	"encoding/binary"
	"net/netip"
	"os"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/agent6/agent6/identity"
)

// fakeTUN is an in-memory tun.Device: Read returns queued packets, Write
// records what reaches it.
type fakeTUN struct {
	mu      sync.Mutex
	toRead  [][]byte
	written [][]byte
	events  chan tun.Event
}

var _ tun.Device = (*fakeTUN)(nil)

func (f *fakeTUN) File() *os.File           { return nil }
func (f *fakeTUN) MTU() (int, error)        { return 1420, nil }
func (f *fakeTUN) Name() (string, error)    { return "fake", nil }
func (f *fakeTUN) Events() <-chan tun.Event { return f.events }
func (f *fakeTUN) BatchSize() int           { return 128 }
func (f *fakeTUN) Close() error             { return nil }

func (f *fakeTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for n < len(bufs) && len(f.toRead) > 0 {
		sizes[n] = copy(bufs[n][offset:], f.toRead[0])
		f.toRead = f.toRead[1:]
		n++
	}
	return n, nil
}

func (f *fakeTUN) Write(bufs [][]byte, offset int) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range bufs {
		f.written = append(f.written, append([]byte(nil), b[offset:]...))
	}
	return len(bufs), nil
}

// udp6 builds an IPv6/UDP packet with a payload of n bytes.
func udp6(src, dst netip.Addr, sport, dport uint16, n int) []byte {
	p := make([]byte, 40+8+n)
	p[0] = 6 << 4
	binary.BigEndian.PutUint16(p[4:], uint16(8+n))
	p[6] = protoUDP
	p[7] = 64
	s, d := src.As16(), dst.As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	binary.BigEndian.PutUint16(p[40:], sport)
	binary.BigEndian.PutUint16(p[42:], dport)
	binary.BigEndian.PutUint16(p[44:], uint16(8+n))
	return p
}

func testAddrs() (local, remote netip.Addr) {
	k1, _ := identity.PrivateKeyFromSeed(make([]byte, 32))
	seed := make([]byte, 32)
	seed[0] = 1
	k2, _ := identity.PrivateKeyFromSeed(seed)
	return k1.WireGuard().Public().Addr(), k2.WireGuard().Public().Addr()
}

const off = 16 // like wireguard-go's headroom

func batch(pkts ...[]byte) [][]byte {
	bufs := make([][]byte, len(pkts))
	for i, p := range pkts {
		bufs[i] = make([]byte, off+len(p))
		copy(bufs[i][off:], p)
	}
	return bufs
}

func TestFilterOutbound(t *testing.T) {
	local, remote := testAddrs()
	fake := &fakeTUN{}
	f := NewFilter(fake, FilterConfig{Local: local})
	defer f.Close()
	spoof := netip.MustParseAddr("2001:21::bad")
	fake.toRead = [][]byte{
		udp6(local, remote, 1000, 53, 10),
		udp6(spoof, remote, 1000, 53, 10),                                             // spoofed source
		udp6(netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::2"), 0, 0, 0), // kernel chatter
		udp6(local, netip.MustParseAddr("2001:db8::1"), 1, 2, 0),                      // outside the overlay
		{0x45, 0, 0, 20}, // IPv4 / malformed
		udp6(local, remote, 1000, 53, 20),
	}
	bufs := make([][]byte, 8)
	for i := range bufs {
		bufs[i] = make([]byte, off+1500)
	}
	sizes := make([]int, 8)
	n, err := f.Read(bufs, sizes, off)
	if err != nil || n != 6 {
		t.Fatalf("Read = %d, %v", n, err)
	}
	want := []bool{true, false, false, false, false, true}
	for i, keep := range want {
		if (sizes[i] != 0) != keep {
			t.Errorf("packet %d: size %d, want kept=%v", i, sizes[i], keep)
		}
	}
	if got := f.Drops(DropSpoofedSource); got != 1 {
		t.Errorf("spoofed drops = %d, want 1", got)
	}
	if got := f.Drops(DropNotOverlay); got != 2 {
		t.Errorf("not-overlay drops = %d, want 2", got)
	}
	if got := f.Drops(DropMalformed); got != 1 {
		t.Errorf("malformed drops = %d, want 1", got)
	}
	st := f.Stats()
	if st.OutPackets != 2 || st.OutBytes != uint64(2*48+30) || st.ActiveFlows != 1 {
		t.Errorf("stats = %+v", st)
	}
}

func TestFilterInbound(t *testing.T) {
	local, remote := testAddrs()
	fake := &fakeTUN{}
	f := NewFilter(fake, FilterConfig{Local: local})
	defer f.Close()
	good1 := udp6(remote, local, 53, 1000, 1)
	foreign := udp6(remote, remote, 53, 1000, 2)
	good2 := udp6(remote, local, 53, 1000, 3)
	bad := []byte{0x60, 0, 0, 0}
	if n, err := f.Write(batch(good1, foreign, bad, good2), off); err != nil || n != 4 {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if len(fake.written) != 2 || string(fake.written[0]) != string(good1) || string(fake.written[1]) != string(good2) {
		t.Fatalf("inner device got %d packets, want good1, good2 in order", len(fake.written))
	}
	if f.Drops(DropForeignDestination) != 1 || f.Drops(DropMalformed) != 1 {
		t.Fatalf("drops = %v", f.Stats().Drops)
	}
	// An all-refused batch writes nothing.
	fake.written = nil
	f.Write(batch(foreign), off)
	if len(fake.written) != 0 {
		t.Fatal("refused packet reached the inner device")
	}
	// Both directions of a flow share one entry.
	fake.toRead = [][]byte{udp6(local, remote, 1000, 53, 5)}
	bufs, sizes := [][]byte{make([]byte, off+1500)}, []int{0}
	f.Read(bufs, sizes, off)
	flows := f.Flows()
	if len(flows) != 1 {
		t.Fatalf("flows = %+v", flows)
	}
	fl := flows[0]
	if fl.Local != netip.AddrPortFrom(local, 1000) || fl.Remote != netip.AddrPortFrom(remote, 53) || fl.Proto != protoUDP ||
		fl.RxPackets != 2 || fl.TxPackets != 1 {
		t.Fatalf("flow = %+v", fl)
	}
}

func TestFilterFlowExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		local, remote := testAddrs()
		var mu sync.Mutex
		var ended []Flow
		f := NewFilter(&fakeTUN{}, FilterConfig{Local: local, FlowIdle: time.Minute, OnFlowEnd: func(fl Flow) {
			mu.Lock()
			ended = append(ended, fl)
			mu.Unlock()
		}})
		f.Write(batch(udp6(remote, local, 53, 1, 0)), off)
		time.Sleep(30 * time.Second)
		f.Write(batch(udp6(remote, local, 53, 2, 0)), off)
		time.Sleep(45 * time.Second) // first flow idle 75 s, second 45 s
		synctest.Wait()
		mu.Lock()
		if len(ended) != 1 || ended[0].Local.Port() != 1 {
			t.Fatalf("ended after 75 s = %+v, want the first flow only", ended)
		}
		mu.Unlock()
		if f.Stats().ActiveFlows != 1 {
			t.Fatalf("active flows = %d, want 1", f.Stats().ActiveFlows)
		}
		f.Close()
		if len(ended) != 2 {
			t.Fatalf("Close ended %d flows in all, want 2", len(ended))
		}
	})
}

func TestFilterTableFull(t *testing.T) {
	local, remote := testAddrs()
	f := NewFilter(&fakeTUN{}, FilterConfig{Local: local, MaxFlows: 2})
	defer f.Close()
	fake := f.inner.(*fakeTUN)
	f.Write(batch(udp6(remote, local, 1, 1, 0), udp6(remote, local, 2, 2, 0), udp6(remote, local, 3, 3, 0)), off)
	if len(fake.written) != 3 {
		t.Fatalf("a full table must not drop traffic: %d of 3 delivered", len(fake.written))
	}
	if st := f.Stats(); st.ActiveFlows != 2 || st.Untracked != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

// BenchmarkFilterEstablished measures the per-packet cost of an established
// flow in each direction: one batch of 128 packets per iteration.
func BenchmarkFilterEstablished(b *testing.B) {
	local, remote := testAddrs()
	const batchSize = 128
	task := netip.MustParseAddr("2001:21::7a5c")
	for _, dir := range []string{"in", "out", "out-task"} {
		b.Run(dir, func(b *testing.B) {
			fake := &fakeTUN{}
			f := NewFilter(nullTUN{fake}, FilterConfig{Local: local})
			defer f.Close()
			var pkt []byte
			switch dir {
			case "in":
				pkt = udp6(remote, local, 443, 50000, 1200)
			case "out":
				pkt = udp6(local, remote, 50000, 443, 1200)
			case "out-task": // a task's established flow to a peer holding its delegation
				f.AddTask(task)
				f.Release(task, remote)
				pkt = udp6(task, remote, 50000, 443, 1200)
			}
			pkts := make([][]byte, batchSize)
			for i := range pkts {
				pkts[i] = pkt
			}
			bufs := batch(pkts...)
			sizes := make([]int, batchSize)
			work := make([][]byte, batchSize)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if dir == "in" {
					copy(work, bufs)
					f.Write(work, off)
				} else { // out, out-task
					for i := range sizes {
						sizes[i] = len(pkt)
					}
					f.filterOut(bufs, sizes, batchSize, off)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batchSize), "ns/packet")
		})
	}
}

// nullTUN discards writes, so the benchmark measures the filter alone.
type nullTUN struct{ *fakeTUN }

func (nullTUN) Write(bufs [][]byte, offset int) (int, error) { return len(bufs), nil }

// A task's first packets to a peer are held until Release, then read in
// order before anything new; Discard drops them.
func TestFilterTaskHold(t *testing.T) {
	local, remote := testAddrs()
	task := netip.MustParseAddr("2001:21::7a5c")
	var held []netip.Addr
	fake := &fakeTUN{}
	f := NewFilter(fake, FilterConfig{Local: local, OnHold: func(tk, dst netip.Addr) {
		if tk != task {
			t.Errorf("OnHold for %s", tk)
		}
		held = append(held, dst)
	}})
	defer f.Close()
	f.AddTask(task)
	fake.toRead = [][]byte{udp6(task, remote, 1, 2, 1), udp6(task, remote, 1, 2, 2), udp6(local, remote, 3, 4, 3)}
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, off+1500)
	}
	sizes := make([]int, 4)
	n, _ := f.Read(bufs, sizes, off)
	if n != 3 || sizes[0] != 0 || sizes[1] != 0 || sizes[2] == 0 {
		t.Fatalf("first read: n=%d sizes=%v; want the task's two packets held, the agent's passed", n, sizes[:n])
	}
	if len(held) != 1 || held[0] != remote {
		t.Fatalf("OnHold calls: %v, want one for %s", held, remote)
	}
	// Inbound to the task address is accepted.
	f.Write(batch(udp6(remote, task, 2, 1, 0)), off)
	if len(fake.written) != 1 {
		t.Fatal("inbound packet to the task address refused")
	}
	f.Release(task, remote)
	n, err := f.Read(bufs, sizes, off)
	if err != nil || n != 2 || sizes[0] != 49 || sizes[1] != 50 {
		t.Fatalf("after Release: n=%d sizes=%v err=%v; want the two held packets in order", n, sizes[:n], err)
	}
	// Now the task's packets to that peer pass; to another peer they wait.
	other := netip.MustParseAddr("2001:21::beef")
	fake.toRead = [][]byte{udp6(task, remote, 1, 2, 0), udp6(task, other, 1, 2, 0)}
	n, _ = f.Read(bufs, sizes, off)
	if n != 2 || sizes[0] == 0 || sizes[1] != 0 {
		t.Fatalf("delivered peer passes, new peer held: sizes=%v", sizes[:n])
	}
	f.Discard(task, other)
	if f.Drops(DropUndelivered) != 1 {
		t.Fatalf("undelivered drops = %d, want 1", f.Drops(DropUndelivered))
	}
	// A removed task address sends nothing: the tail of its connections
	// is counted as such, not as spoofing.
	f.RemoveTask(task)
	fake.toRead = [][]byte{udp6(task, remote, 1, 2, 0)}
	f.Read(bufs, sizes, off)
	if sizes[0] != 0 || f.Drops(DropTaskEnded) != 1 || f.Drops(DropSpoofedSource) != 0 {
		t.Fatalf("removed task: size %d, ended drops %d, spoofed drops %d", sizes[0], f.Drops(DropTaskEnded), f.Drops(DropSpoofedSource))
	}
	f.Write(batch(udp6(remote, task, 2, 1, 0)), off)
	if f.Drops(DropTaskEnded) != 2 {
		t.Fatal("inbound packet to an ended task not counted as such")
	}
}

func TestFilterAwait(t *testing.T) {
	local, remote := testAddrs()
	other := netip.MustParseAddr("2001:21::beef")
	fake := &fakeTUN{}
	f := NewFilter(fake, FilterConfig{Local: local})
	defer f.Close()
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, off+1500)
	}
	sizes := make([]int, 4)

	f.Await(remote)
	f.Await(remote) // again: no effect
	if !f.Awaiting(remote) || f.Awaiting(other) {
		t.Fatal("Awaiting reports the wrong peers")
	}
	fake.toRead = [][]byte{udp6(local, remote, 1, 2, 1), udp6(local, other, 1, 2, 2), udp6(local, remote, 1, 2, 3)}
	n, _ := f.Read(bufs, sizes, off)
	if n != 3 || sizes[0] != 0 || sizes[1] == 0 || sizes[2] != 0 {
		t.Fatalf("read: sizes=%v; want the two packets to the awaited peer held, the other passed", sizes[:n])
	}
	if st := f.Stats(); st.Held != 2 {
		t.Fatalf("held = %d, want 2", st.Held)
	}
	// Admitted: the held packets come out of the next Read, in order.
	f.EndAwait(remote, true)
	if f.Awaiting(remote) {
		t.Fatal("still awaiting after EndAwait")
	}
	n, err := f.Read(bufs, sizes, off)
	if err != nil || n != 2 || sizes[0] != 49 || sizes[1] != 51 {
		t.Fatalf("after EndAwait: n=%d sizes=%v err=%v; want the two held packets in order", n, sizes[:n], err)
	}
	// Not admitted: dropped and counted; at most maxHeld are kept.
	f.Await(other)
	fake.toRead = nil
	for range maxHeld + 3 {
		fake.toRead = append(fake.toRead, udp6(local, other, 1, 2, 0))
	}
	for len(fake.toRead) > 0 {
		f.Read(bufs, sizes, off)
	}
	if got := f.Drops(DropNotAdmitted); got != 3 {
		t.Fatalf("not_admitted drops beyond the bound = %d, want 3", got)
	}
	f.EndAwait(other, false)
	if got := f.Drops(DropNotAdmitted); got != maxHeld+3 {
		t.Fatalf("not_admitted drops = %d, want %d", got, maxHeld+3)
	}
	f.EndAwait(other, true) // not awaited: no effect
	fake.toRead = [][]byte{udp6(local, other, 1, 2, 0)}
	if n, _ := f.Read(bufs, sizes, off); n != 1 || sizes[0] == 0 {
		t.Fatal("a packet after the wait ended was not passed")
	}
}
