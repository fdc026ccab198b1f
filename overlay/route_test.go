package overlay

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/agent6/agent6/identity"
)

// chainNode is a filter on an in-memory TUN with its agent's keys and its
// peers known, as a Device sets them up: the packet path of one node,
// without WireGuard.
type chainNode struct {
	testAgent
	f   *Filter
	tun *fakeTUN
}

// chain is a set of nodes and a fake WireGuard between them: a packet
// goes to the node its outer destination names, and only if its outer
// source belongs to the node that sent it (cryptokey routing).
type chain struct {
	t     *testing.T
	nodes map[netip.Addr]*chainNode
}

func newChain(t *testing.T) *chain { return &chain{t: t, nodes: map[netip.Addr]*chainNode{}} }

func (c *chain) add(a testAgent, cfg FilterConfig) *chainNode {
	cfg.Local = a.addr
	n := &chainNode{testAgent: a, tun: &fakeTUN{}}
	n.f = NewFilter(n.tun, cfg)
	n.f.keys.set(a.priv)
	c.t.Cleanup(func() { n.f.Close() })
	for _, o := range c.nodes {
		o.f.setPeerAddrs(a.pub, []netip.Prefix{netip.PrefixFrom(a.addr, 128)})
		n.f.setPeerAddrs(o.pub, []netip.Prefix{netip.PrefixFrom(o.addr, 128)})
	}
	c.nodes[a.addr] = n
	return n
}

// read returns what n's filter hands WireGuard now.
func (n *chainNode) read() [][]byte {
	var out [][]byte
	for {
		bufs := make([][]byte, 8)
		for i := range bufs {
			bufs[i] = make([]byte, 65535) // as wireguard-go's buffers
		}
		sizes := make([]int, 8)
		k, _ := n.f.Read(bufs, sizes, off)
		if k == 0 {
			return out
		}
		for i := range k {
			if sizes[i] > 0 {
				out = append(out, append([]byte(nil), bufs[i][off:off+sizes[i]]...))
			}
		}
	}
}

// send has n's stack send pkts, and carries what leaves n through the
// chain.
func (c *chain) send(n *chainNode, pkts ...[]byte) {
	n.tun.mu.Lock()
	n.tun.toRead = append(n.tun.toRead, pkts...)
	n.tun.mu.Unlock()
	c.carry(n, n.read())
}

// carry delivers pkts sent by from to the nodes they are addressed to,
// and what those forward, on and on.
func (c *chain) carry(from *chainNode, pkts [][]byte) {
	for _, p := range pkts {
		c.deliver(from, p)
	}
}

// deliver hands one packet from one node to the node its outer
// destination names, as WireGuard would.
func (c *chain) deliver(from *chainNode, p []byte) {
	to := c.nodes[netip.AddrFrom16([16]byte(p[24:40]))]
	if to == nil {
		c.t.Fatalf("packet to %s: no such node", netip.AddrFrom16([16]byte(p[24:40])))
	}
	if netip.AddrFrom16([16]byte(p[8:24])) != from.addr {
		c.t.Fatalf("%s sent a packet from %s: WireGuard would refuse it", from.addr, netip.AddrFrom16([16]byte(p[8:24])))
	}
	to.f.Write(batch(p), off)
	c.carry(to, to.read())
}

// delivered returns (and forgets) what reached n's stack.
func (n *chainNode) delivered() [][]byte {
	n.tun.mu.Lock()
	defer n.tun.mu.Unlock()
	out := n.tun.written
	n.tun.written = nil
	return out
}

// tcp6 builds a TCP segment with the given flags, an MSS option on SYNs,
// a valid checksum and n bytes of payload.
func tcp6(src, dst netip.Addr, sport, dport uint16, flags byte, mss uint16, n int) []byte {
	hl := 20
	if flags&0x02 != 0 {
		hl = 24
	}
	p := make([]byte, 40+hl+n)
	p[0] = 6 << 4
	binary.BigEndian.PutUint16(p[4:], uint16(hl+n))
	p[6] = protoTCP
	p[7] = 64
	s, d := src.As16(), dst.As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	t := p[40:]
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	t[12] = byte(hl/4) << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:], 65535)
	if hl == 24 {
		t[20], t[21] = 2, 4
		binary.BigEndian.PutUint16(t[22:], mss)
	}
	binary.BigEndian.PutUint16(t[16:], l4Checksum(p, protoTCP, t))
	return p
}

// A → W1 → W2 → D: the source encapsulates, each waypoint stamps and
// forwards, the destination delivers the inner packet alone; the reply
// comes back the other way; what bypasses the waypoints, skips one,
// crosses them in the wrong order, or carries a forged or replayed stamp
// is refused, each under its reason.
func TestViaChain(t *testing.T) {
	a, w1, w2, d, e := newTestAgent(1), newTestAgent(2), newTestAgent(3), newTestAgent(4), newTestAgent(5)
	c := newChain(t)
	var mu sync.Mutex
	var receipts []Receipt
	onReceipt := func(r Receipt) { mu.Lock(); receipts = append(receipts, r); mu.Unlock() }
	w1Key, _ := identity.PrivateKeyFromSeed(bytes.Repeat([]byte{2}, 32))
	na := c.add(a, FilterConfig{Via: staticVia{
		out: map[netip.Addr][]Waypoint{d.addr: {w1.waypoint(), w2.waypoint()}},
		in:  map[netip.Addr][]Waypoint{d.addr: {w2.waypoint(), w1.waypoint()}},
	}})
	nw1 := c.add(w1, FilterConfig{Transit: &Transit{OnReceipt: onReceipt, Sign: w1Key.Sign}})
	nw2 := c.add(w2, FilterConfig{Transit: &Transit{}})
	nd := c.add(d, FilterConfig{Via: staticVia{
		out: map[netip.Addr][]Waypoint{a.addr: {w2.waypoint(), w1.waypoint()}},
		in:  map[netip.Addr][]Waypoint{a.addr: {w1.waypoint(), w2.waypoint()}},
	}})
	ne := c.add(e, FilterConfig{})

	req := udp6(a.addr, d.addr, 40000, 8080, 100)
	c.send(na, req)
	if got := nd.delivered(); len(got) != 1 || !bytes.Equal(got[0], req) {
		t.Fatalf("D's stack got %d packets, want the inner packet as A sent it", len(got))
	}
	if nw1.f.Stats().Forwarded != 1 || nw2.f.Stats().Forwarded != 1 {
		t.Fatalf("forwarded: W1 %d, W2 %d", nw1.f.Stats().Forwarded, nw2.f.Stats().Forwarded)
	}
	reply := udp6(d.addr, a.addr, 8080, 40000, 50)
	c.send(nd, reply)
	if got := na.delivered(); len(got) != 1 || !bytes.Equal(got[0], reply) {
		t.Fatal("the reply did not come back through W2 and W1")
	}
	// W1's one transit flow holds both directions.
	if tf := nw1.f.TransitFlows(); len(tf) != 1 || tf[0].Packets != 1 || tf[0].RevPackets != 1 || tf[0].Prev != a.addr || tf[0].Next != w2.addr {
		t.Fatalf("W1's transit flows: %+v", tf)
	}

	// A flow without waypoints goes directly.
	direct := udp6(a.addr, e.addr, 40001, 53, 10)
	out := na.sendRaw(direct)
	if len(out) != 1 || !bytes.Equal(out[0], direct) {
		t.Fatal("a flow to E (no waypoints) was not sent as it is")
	}
	c.carry(na, out)
	if got := ne.delivered(); len(got) != 1 {
		t.Fatal("E did not get A's direct packet")
	}

	// Bypass, skip, wrong order: D refuses, each counted.
	for _, tc := range []struct {
		name string
		via  []Waypoint
		want DropReason
	}{
		{"direct", nil, DropWaypointBypassed},
		{"W2 only", []Waypoint{w2.waypoint()}, DropWaypointBypassed},
		{"W2 then W1", []Waypoint{w2.waypoint(), w1.waypoint()}, DropWaypointOrder},
	} {
		na.f.SetViaOverride(d.addr, tc.via)
		before := nd.f.Drops(tc.want)
		c.send(na, udp6(a.addr, d.addr, 40000, 8080, 100))
		if got := nd.delivered(); len(got) != 0 {
			t.Errorf("%s: D delivered it", tc.name)
		}
		if nd.f.Drops(tc.want) != before+1 {
			t.Errorf("%s: D's %s drops %d → %d, want one more", tc.name, tc.want, before, nd.f.Drops(tc.want))
		}
	}
	na.f.ClearViaOverride(d.addr)

	// A stamp forged between W1 and W2, and a packet W2 sent replayed.
	out = na.sendRaw(udp6(a.addr, d.addr, 40000, 8080, 100))
	nw1.f.Write(batch(out[0]), off)
	fwd := nw1.read()
	var v srv6View
	if err := parseSRv6(fwd[0], &v); err != nil || v.sl != 1 {
		t.Fatalf("W1 forwarded %v, sl %d", err, v.sl)
	}
	good := append([]byte(nil), fwd[0]...)
	v.stamp(0)[3] ^= 0x10
	before := nd.f.Drops(DropTransitProof)
	c.carry(nw1, fwd)
	if len(nd.delivered()) != 0 || nd.f.Drops(DropTransitProof) != before+1 {
		t.Fatal("D accepted a forged stamp")
	}
	nw2.f.Write(batch(good), off)
	last := nw2.read()
	c.carry(nw2, [][]byte{append([]byte(nil), last[0]...)})
	if len(nd.delivered()) != 1 {
		t.Fatal("D refused the genuine packet")
	}
	c.carry(nw2, last) // again
	if len(nd.delivered()) != 0 || nd.f.Drops(DropTransitProof) != before+2 {
		t.Fatal("D accepted a replayed packet")
	}

	// A packet that claims to have crossed W1 but comes from A: W2
	// refuses it.
	p := buildSRv6(udp6(a.addr, d.addr, 40000, 8080, 10), []netip.Addr{w1.addr, w2.addr}, 1)
	p[ipv6HeaderLen+3] = 1 // as if W1 had forwarded it
	copy(p[24:40], w2.addr.AsSlice())
	parseSRv6(p, &v)
	v.stamp(0)[0] = 1 // and stamped it
	before = nw2.f.Drops(DropTransitProof)
	c.deliver(na, p)
	if nw2.f.Drops(DropTransitProof) != before+1 || len(nd.delivered()) != 0 {
		t.Fatal("W2 forwarded a packet that skipped W1")
	}

	// The local stack may not send its own SRH.
	before = na.f.Drops(DropBadSRH)
	if out := na.sendRaw(buildSRv6(udp6(a.addr, d.addr, 1, 2, 0), []netip.Addr{w1.addr}, 1)); len(out) != 0 || na.f.Drops(DropBadSRH) != before+1 {
		t.Fatal("the filter passed an SRH the local stack made")
	}
	// A node that is no waypoint forwards nothing.
	p = buildSRv6(udp6(a.addr, d.addr, 40000, 8080, 10), []netip.Addr{e.addr}, 1)
	c.deliver(na, p)
	if ne.f.Drops(DropNotWaypoint) != 1 || len(nd.delivered()) != 0 {
		t.Fatal("E, no waypoint, forwarded a packet")
	}

	// W1's receipt, when its flows end: signed, with what it forwarded.
	nw1.f.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(receipts) != 1 {
		t.Fatalf("%d receipts from W1, want 1", len(receipts))
	}
	r := receipts[0]
	if !r.Verify(w1Key.Public()) || r.Waypoint != w1.addr || r.Flow.Src.Addr() != a.addr || r.Flow.Dst != netip.AddrPortFrom(d.addr, 8080) ||
		r.Packets < 2 || r.RevPackets != 1 || r.Hop != 0 || r.Hops != 2 {
		t.Fatalf("receipt %+v", r)
	}
	r.Packets++
	if r.Verify(w1Key.Public()) {
		t.Fatal("a changed receipt still verifies")
	}
}

// sendRaw has n's stack send pkts and returns what n hands WireGuard,
// without carrying it.
func (n *chainNode) sendRaw(pkts ...[]byte) [][]byte {
	n.tun.mu.Lock()
	n.tun.toRead = append(n.tun.toRead, pkts...)
	n.tun.mu.Unlock()
	return n.read()
}

// The source fails closed and tells its stack at once: no waypoint
// reachable is ICMPv6 administratively prohibited; a packet too large for
// the encapsulation is ICMPv6 Packet Too Big; TCP's MSS is clamped in
// SYNs both ways.
func TestViaSource(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, w1, w2, d, e := newTestAgent(1), newTestAgent(2), newTestAgent(3), newTestAgent(4), newTestAgent(5)
		c := newChain(t)
		na := c.add(a, FilterConfig{Via: staticVia{
			out: map[netip.Addr][]Waypoint{d.addr: {w1.waypoint(), w2.waypoint()}},
			bad: map[netip.Addr]bool{e.addr: true},
		}})
		for _, p := range []testAgent{w1, w2, d} {
			c.add(p, FilterConfig{})
		}

		syn := udp6(a.addr, e.addr, 40000, 8080, 10)
		if out := na.sendRaw(syn); len(out) != 0 || na.f.Drops(DropNoWaypoint) != 1 {
			t.Fatalf("no waypoint: %d packets out, %d drops", len(out), na.f.Drops(DropNoWaypoint))
		}
		synctest.Wait()
		got := na.delivered()
		if len(got) != 1 {
			t.Fatalf("the stack got %d packets, want one ICMPv6 error", len(got))
		}
		checkICMP(t, got[0], e.addr, a.addr, ICMPv6DestUnreachable, ICMPv6CodeProhibited, 0, syn)

		// Two waypoints cost 144 bytes: the largest inner packet is 1280
		// (IPv6's minimum; its encapsulation, 1424 bytes, exceeds the
		// 1420 MTU and is sent all the same).
		big := udp6(a.addr, d.addr, 40000, 8080, 1281-48)
		if out := na.sendRaw(big); len(out) != 0 || na.f.Drops(DropTooBig) != 1 || na.f.Drops(DropNoWaypoint) != 1 {
			t.Fatal("an oversized packet was sent")
		}
		synctest.Wait()
		got = na.delivered()
		if len(got) != 1 {
			t.Fatalf("the stack got %d packets, want a Packet Too Big", len(got))
		}
		checkICMP(t, got[0], d.addr, a.addr, ICMPv6PacketTooBig, 0, 1280, big)
		if out := na.sendRaw(udp6(a.addr, d.addr, 40000, 8080, 1280-48)); len(out) != 1 || len(out[0]) != 1280+144 {
			t.Fatal("a 1280-byte packet was not sent through its waypoints")
		}

		// A first waypoint that is no peer: WireGuard would drop it all, so
		// the flow fails closed.
		na.f.SetViaOverride(d.addr, []Waypoint{e.waypoint()})
		if out := na.sendRaw(udp6(a.addr, d.addr, 1, 2, 0)); len(out) != 0 || na.f.Drops(DropNoWaypoint) != 2 {
			t.Fatal("a flow through a waypoint that is no peer was sent")
		}
		synctest.Wait()
		na.delivered()
		na.f.ClearViaOverride(d.addr)

		// MSS: 1420 - 144 is under 1280, so 1280 - 60 = 1220.
		out := na.sendRaw(tcp6(a.addr, d.addr, 40002, 443, 0x02, 1360, 0))
		var v srv6View
		if len(out) != 1 || parseSRv6(out[0], &v) != nil {
			t.Fatal("the SYN did not leave encapsulated")
		}
		checkMSS(t, out[0][v.inner:], 1220)
		synAck := tcp6(d.addr, a.addr, 443, 40002, 0x12, 1360, 0) // arriving directly: D sends replies as it likes
		na.f.Write(batch(synAck), off)
		got = na.delivered()
		if len(got) != 1 {
			t.Fatal("the SYN-ACK was not delivered")
		}
		checkMSS(t, got[0], 1220)
	})
}

func checkICMP(t *testing.T, p []byte, from, to netip.Addr, typ, code uint8, param uint32, invoking []byte) {
	t.Helper()
	var info packetInfo
	if !parseIPv6(p, &info) || info.proto != protoICMPv6 || netip.AddrFrom16(info.src) != from || netip.AddrFrom16(info.dst) != to {
		t.Fatalf("not an ICMPv6 message from %s to %s: % x", from, to, p[:min(len(p), 48)])
	}
	m := p[ipv6HeaderLen:]
	if m[0] != typ || m[1] != code || binary.BigEndian.Uint32(m[4:]) != param {
		t.Fatalf("ICMPv6 type %d code %d param %d, want %d %d %d", m[0], m[1], binary.BigEndian.Uint32(m[4:]), typ, code, param)
	}
	if l4Checksum(p, protoICMPv6, m) != 0 {
		t.Fatal("bad ICMPv6 checksum")
	}
	q := m[8:]
	if len(p) > minMTU || !bytes.Equal(q, invoking[:len(q)]) || (len(q) < len(invoking) && len(p) != minMTU) {
		t.Fatalf("quotes %d of %d bytes in %d", len(q), len(invoking), len(p))
	}
}

func checkMSS(t *testing.T, p []byte, want uint16) {
	t.Helper()
	seg := p[ipv6HeaderLen:]
	if got := binary.BigEndian.Uint16(seg[22:]); got != want {
		t.Fatalf("MSS %d, want %d", got, want)
	}
	if l4Checksum(p, protoTCP, seg) != 0 {
		t.Fatal("TCP checksum wrong after the clamp")
	}
}

// inspector drops flows to port 666, inspects those to 8080 packet by
// packet (dropping those with the payload "bad") and passes the rest.
type inspector struct {
	mu      sync.Mutex
	flows   []TransitFlow
	packets int
}

func (i *inspector) InspectFlow(f TransitFlow) Verdict {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.flows = append(i.flows, f)
	switch f.Flow.Dst.Port() {
	case 666:
		return VerdictDrop
	case 8080:
		return VerdictInspect
	}
	return VerdictPass
}

func (i *inspector) InspectPacket(f TransitFlow, pkt []byte) Verdict {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.packets++
	if bytes.HasSuffix(pkt, []byte("bad")) {
		return VerdictDropPacket
	}
	return VerdictInspect
}

// A waypoint's inspection hook sees each flow, and each packet of the
// flows it inspects, and drops what it says.
func TestViaInspection(t *testing.T) {
	a, w1, d := newTestAgent(1), newTestAgent(2), newTestAgent(4)
	c := newChain(t)
	insp := &inspector{}
	via := []Waypoint{w1.waypoint()}
	na := c.add(a, FilterConfig{Via: staticVia{out: map[netip.Addr][]Waypoint{d.addr: via}}})
	nw := c.add(w1, FilterConfig{Transit: &Transit{Inspector: insp}})
	nd := c.add(d, FilterConfig{Via: staticVia{in: map[netip.Addr][]Waypoint{a.addr: via}}})
	payload := func(s string, port uint16) []byte {
		p := udp6(a.addr, d.addr, 40000, port, len(s))
		copy(p[48:], s)
		return p
	}
	c.send(na, payload("ok1", 8080), payload("bad", 8080), payload("ok2", 8080))
	c.send(na, payload("x", 666), payload("y", 666))
	c.send(na, payload("z", 53), payload("w", 53))
	got := nd.delivered()
	if len(got) != 4 || !bytes.HasSuffix(got[0], []byte("ok1")) || !bytes.HasSuffix(got[1], []byte("ok2")) {
		t.Fatalf("D got %d packets, want ok1, ok2 and the two to port 53", len(got))
	}
	insp.mu.Lock()
	defer insp.mu.Unlock()
	if len(insp.flows) != 3 || insp.packets != 3 {
		t.Fatalf("the hook saw %d flows and %d packets, want 3 and 3", len(insp.flows), insp.packets)
	}
	if f := insp.flows[0]; f.Prev != a.addr || f.Next != d.addr || f.Hop != 0 || f.Hops != 1 || f.Reverse {
		t.Fatalf("flow as the hook saw it: %+v", f)
	}
	if n := nw.f.Drops(DropInspection); n != 3 {
		t.Fatalf("inspection drops %d, want 3", n)
	}
}

// BenchmarkSRv6Path measures the filter's cost per packet of an
// established flow through waypoints, with full-size packets (1,280 bytes
// inside, the most two waypoints carry in a 1,420 MTU), batches of 128: the source's encapsulation (with the 1.4 kB copy that puts the
// packet back each time; "copy" is that copy alone), a waypoint's
// checks, stamp and forward (Write, then Read from its queue), and the
// destination's check of one or two stamps, replay window and
// decapsulation.
func BenchmarkSRv6Path(b *testing.B) {
	const batchSize = 128
	a, w1, w2, d := newTestAgent(1), newTestAgent(2), newTestAgent(3), newTestAgent(4)
	mk := func(self testAgent, cfg FilterConfig) *Filter {
		cfg.Local = self.addr
		f := NewFilter(nullTUN{&fakeTUN{}}, cfg)
		f.keys.set(self.priv)
		for _, p := range []testAgent{a, w1, w2, d} {
			f.setPeerAddrs(p.pub, []netip.Prefix{netip.PrefixFrom(p.addr, 128)})
		}
		b.Cleanup(func() { f.Close() })
		return f
	}
	inner := udp6(a.addr, d.addr, 40000, 8080, 1280-48)
	perPacket := func(b *testing.B) {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batchSize), "ns/packet")
	}
	bufs := make([][]byte, batchSize)
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	sizes := make([]int, batchSize)

	for _, name := range []string{"copy", "source"} {
		b.Run(name, func(b *testing.B) {
			f := mk(a, FilterConfig{Via: staticVia{out: map[netip.Addr][]Waypoint{d.addr: {w1.waypoint(), w2.waypoint()}}}})
			b.ReportAllocs()
			for b.Loop() {
				for i := range bufs {
					sizes[i] = copy(bufs[i][off:], inner)
				}
				if name == "source" {
					f.filterOut(bufs, sizes, batchSize, off)
				}
			}
			perPacket(b)
			if name == "source" && sizes[0] != len(inner)+srv6Overhead(2) {
				b.Fatalf("not encapsulated: %d bytes", sizes[0])
			}
		})
	}
	b.Run("waypoint", func(b *testing.B) {
		f := mk(w1, FilterConfig{Transit: &Transit{}})
		pkt := buildSRv6(inner, []netip.Addr{w1.addr, w2.addr}, 1)
		in := batch(slices.Repeat([][]byte{pkt}, batchSize)...)
		work := make([][]byte, batchSize)
		b.ReportAllocs()
		for b.Loop() {
			copy(work, in)
			f.Write(work, off)
			if n, _ := f.Read(bufs, sizes, off); n != batchSize {
				b.Fatalf("forwarded %d of %d", n, batchSize)
			}
		}
		perPacket(b)
	})
	for _, ws := range [][]testAgent{{w1}, {w1, w2}} {
		b.Run(fmt.Sprintf("destination-%d", len(ws)), func(b *testing.B) {
			var need []Waypoint
			var addrs []netip.Addr
			for _, w := range ws {
				need = append(need, w.waypoint())
				addrs = append(addrs, w.addr)
			}
			f := mk(d, FilterConfig{Via: staticVia{in: map[netip.Addr][]Waypoint{a.addr: need}}})
			pkts := make([][]byte, batchSize)
			for i := range pkts {
				pkts[i] = buildSRv6(inner, addrs, uint64(i+1))
				for _, w := range ws {
					stampAs(b, pkts[i], w, d)
				}
			}
			in := batch(pkts...)
			work := make([][]byte, batchSize)
			key := flowKey{local: d.addr.As16(), remote: a.addr.As16(), lport: 8080, rport: 40000, proto: protoUDP}
			b.ReportAllocs()
			for b.Loop() {
				if fl := f.flows.m[key]; fl != nil {
					fl.replay.Store(nil) // the same sequence numbers again
				}
				copy(work, in)
				f.Write(work, off)
			}
			perPacket(b)
			if st := f.Stats(); st.InPackets != uint64(b.N*batchSize) {
				b.Fatalf("delivered %d of %d: drops %v", st.InPackets, b.N*batchSize, st.Drops)
			}
		})
	}
}
