package node_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/overlay"
)

// viaPolicy sends A ↔ D's port 8080 and 666 (TCP or UDP) through the one
// waypoint W, both ways, and requires it of what arrives; the rest goes
// directly.
type viaPolicy struct{ a, w, d *node.Node }

func (p *viaPolicy) route(t overlay.Tuple) []overlay.Waypoint {
	port := t.Dst.Port()
	if t.Src.Addr() == p.d.Addr() {
		port = t.Src.Port()
	}
	ends := (t.Src.Addr() == p.a.Addr() && t.Dst.Addr() == p.d.Addr()) || (t.Src.Addr() == p.d.Addr() && t.Dst.Addr() == p.a.Addr())
	if ends && (port == 8080 || port == 666) {
		return []overlay.Waypoint{{Addr: p.w.Addr(), Key: p.w.PublicKey()}}
	}
	return nil
}

func (p *viaPolicy) Outbound(t overlay.Tuple) ([]overlay.Waypoint, error) { return p.route(t), nil }
func (p *viaPolicy) Inbound(t overlay.Tuple) []overlay.Waypoint           { return p.route(t) }

// countingInspector counts what it sees, inspects port 8080 packet by
// packet and drops the flows to port 666.
type countingInspector struct {
	mu      sync.Mutex
	flows   map[uint16]int
	packets map[uint16]int
}

func (c *countingInspector) InspectFlow(f overlay.TransitFlow) overlay.Verdict {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.flows[f.Flow.Dst.Port()]++
	if f.Flow.Dst.Port() == 666 {
		return overlay.VerdictDrop
	}
	return overlay.VerdictInspect
}

func (c *countingInspector) InspectPacket(f overlay.TransitFlow, pkt []byte) overlay.Verdict {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.packets[f.Flow.Dst.Port()]++
	return overlay.VerdictInspect
}

// An embedded node serves as a waypoint with an inspection hook: the
// hook sees every packet of the flow it inspects, a TCP exchange through
// it works, a flow it drops gets nowhere, and its receipts are signed
// with the waypoint's agent key.
func TestEmbeddedWaypoint(t *testing.T) {
	insp := &countingInspector{flows: map[uint16]int{}, packets: map[uint16]int{}}
	var mu sync.Mutex
	var receipts []overlay.Receipt
	policy := &viaPolicy{}
	a := &node.Node{Via: policy}
	w := &node.Node{Waypoint: &node.Waypoint{Inspector: insp, OnReceipt: func(r overlay.Receipt) {
		mu.Lock()
		receipts = append(receipts, r)
		mu.Unlock()
	}}}
	d := &node.Node{Via: policy}
	policy.a, policy.w, policy.d = a, w, d
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range []*node.Node{a, w, d} {
		if err := n.Up(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
	}
	link(t, a, w)
	link(t, w, d)
	link(t, a, d)

	ln, err := d.Listen("tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	c, err := a.Dial(ctx, "tcp", netip.AddrPortFrom(d.Addr(), 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("through the waypoint "), 5000)
	go c.Write(msg)
	got := make([]byte, len(msg))
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through the waypoint: %v", err)
	}
	c.Close()

	// Port 666: the hook drops the flow; nothing reaches D.
	pc, err := d.ListenPacket("udp", ":666")
	if err != nil {
		t.Fatal(err)
	}
	u, err := a.Dial(ctx, "udp", netip.AddrPortFrom(d.Addr(), 666).String())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for i := 0; ; i++ {
		st, _ := w.Status()
		if st.Filter.Drops["inspection"] >= 3 {
			break
		}
		if i == 100 {
			t.Fatalf("the hook's drops were not counted: %v", st.Filter.Drops)
		}
		u.Write([]byte("dropped"))
		time.Sleep(50 * time.Millisecond)
	}
	pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _, err := pc.ReadFrom(make([]byte, 64)); err == nil {
		t.Fatalf("D received %d bytes of a flow the waypoint dropped", n)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatal(err)
	}

	// The hook saw every packet of the 8080 flow that W forwarded.
	flows, err := w.TransitFlows()
	if err != nil {
		t.Fatal(err)
	}
	var forwarded uint64
	for _, f := range flows {
		if f.Flow.Dst.Port() == 8080 {
			forwarded += f.Packets + f.RevPackets
		}
	}
	insp.mu.Lock()
	seen, dropFlows := insp.packets[8080], insp.flows[666]
	insp.mu.Unlock()
	if forwarded < 20 || uint64(seen) < forwarded {
		t.Fatalf("W forwarded %d packets of the 8080 flow, the hook saw %d", forwarded, seen)
	}
	if dropFlows != 1 {
		t.Fatalf("the hook was asked about the 666 flow %d times, want once", dropFlows)
	}

	// Receipts, at W's close: signed by W's agent key.
	wKey := w.AgentKey()
	w.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(receipts) < 2 {
		t.Fatalf("%d receipts, want the 8080 and 666 flows'", len(receipts))
	}
	for _, r := range receipts {
		if !r.Verify(wKey) || r.Waypoint != w.Addr() {
			t.Fatalf("receipt %+v does not verify with W's key", r)
		}
		if r.Flow.Dst.Port() == 666 && (r.Verdict != overlay.VerdictDrop || r.Dropped < 3 || r.Packets != 0) {
			t.Fatalf("receipt of the dropped flow: %+v", r)
		}
	}
}

// A capture on a node while it exchanges datagrams with a peer: tshark
// reads the file, and sees both directions; a capture for another peer
// sees none of them.
func TestCapture(t *testing.T) {
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("tshark not installed (CI installs it)")
		}
		t.Skip("tshark not installed")
	}
	a, b := pair(t)
	pc, err := b.ListenPacket("udp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	go func() { // echo
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	u, err := a.Dial(context.Background(), "udp", netip.AddrPortFrom(b.Addr(), 7).String())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()

	file := filepath.Join(t.TempDir(), "a.pcap")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	var other bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	var st1, st2 node.CaptureStats
	var err1, err2 error
	var wg sync.WaitGroup
	started := make(chan struct{})
	wg.Go(func() { st1, err1 = a.Capture(ctx, &firstWrite{w: f, c: started}, b.Addr()) })
	wg.Go(func() { st2, err2 = a.Capture(ctx, &other, netip.MustParseAddr("2001:21::1")) })
	<-started // the header: the capture records from now on
	// Ping until ten echoes came back: the first wait for the handshake.
	echoes := 0
	buf := make([]byte, 64)
	for i := 0; echoes < 10; i++ {
		if i == 100 {
			t.Fatalf("%d echoes after 100 pings", echoes)
		}
		u.Write([]byte("ping " + strconv.Itoa(i)))
		u.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := u.Read(buf); err == nil {
			echoes++
		}
	}
	cancel()
	wg.Wait()
	f.Close()
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if st1.Packets < 20 || st1.Dropped != 0 {
		t.Fatalf("the capture wrote %d packets and dropped %d, want at least the 20 of ten echoes", st1.Packets, st1.Dropped)
	}
	if st2.Packets != 0 || other.Len() != 24 {
		t.Fatalf("the capture for another peer wrote %d packets, %d bytes; want the 24-byte header alone", st2.Packets, other.Len())
	}
	out, err := exec.Command(tshark, "-r", file, "-Y", "udp", "-T", "fields", "-e", "ipv6.src", "-e", "ipv6.dst", "-e", "udp.srcport", "-e", "udp.dstport").Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	var toB, fromB int
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		fs := strings.Split(line, "\t")
		switch {
		case fs[0] == a.Addr().String() && fs[1] == b.Addr().String() && fs[3] == "7":
			toB++
		case fs[0] == b.Addr().String() && fs[1] == a.Addr().String() && fs[2] == "7":
			fromB++
		}
	}
	if toB < 10 || fromB < 10 {
		t.Fatalf("tshark found %d datagrams to b and %d from b, want at least 10 each:\n%s", toB, fromB, out)
	}
}

// firstWrite closes c at its first write.
type firstWrite struct {
	w    io.Writer
	c    chan struct{}
	once sync.Once
}

func (f *firstWrite) Write(b []byte) (int, error) {
	f.once.Do(func() { close(f.c) })
	return f.w.Write(b)
}
