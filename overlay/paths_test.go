package overlay

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/agent6/agent6/identity"
)

var loopback = netip.MustParseAddr("127.0.0.1")

func (n *crossNode) addr() netip.AddrPort { return netip.AddrPortFrom(loopback, n.port) }

// Frames round-trip, and a MAC verifies only under its key.
func TestPathFrames(t *testing.T) {
	a, _ := identity.GeneratePrivateKey()
	b, _ := identity.GeneratePrivateKey()
	ka, err := sharedKey(a.WireGuard(), b.WireGuard().Public(), labelPath)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := sharedKey(b.WireGuard(), a.WireGuard().Public(), labelPath)
	if ka != kb {
		t.Fatal("the two sides derived different keys")
	}
	other, _ := sharedKey(a.WireGuard(), b.WireGuard().Public(), labelRelay)
	if other == ka {
		t.Fatal("the relay label gives the path key")
	}
	txid := [txidSize]byte{1, 2, 3}
	obs := netip.MustParseAddrPort("198.51.100.7:4242")
	for _, tc := range []struct {
		frame []byte
		check func(pathFrame) bool
	}{
		{appendPing(nil, &ka, a.WireGuard().Public(), txid), func(f pathFrame) bool {
			return f.typ == framePing && f.key.Equal(a.WireGuard().Public()) && f.txid == txid
		}},
		{appendPong(nil, &ka, b.WireGuard().Public(), txid, obs), func(f pathFrame) bool {
			return f.typ == framePong && f.observed == obs && f.txid == txid
		}},
		{appendBind(nil, &ka, a.WireGuard().Public(), 77), func(f pathFrame) bool { return f.typ == frameBind && f.stamp == 77 }},
		{appendBound(nil, &ka, 77, obs), func(f pathFrame) bool { return f.typ == frameBound && f.stamp == 77 && f.observed == obs }},
	} {
		f, err := parsePathFrame(tc.frame)
		if err != nil || !tc.check(f) {
			t.Fatalf("% x parsed to %+v, %v", tc.frame, f, err)
		}
		if !f.verify(&ka) || f.verify(&other) {
			t.Fatalf("type %d: MAC verified wrongly", f.typ)
		}
		tampered := bytes.Clone(tc.frame)
		tampered[pathHeader] ^= 1
		if g, err := parsePathFrame(tampered); err != nil || g.verify(&ka) {
			t.Fatalf("type %d: a tampered frame verified", f.typ)
		}
	}
	send := append(appendRelayHeader(nil, frameSend, tagOf(b.WireGuard().Public())), "datagram"...)
	if f, err := parsePathFrame(send); err != nil || string(f.payload) != "datagram" || f.tag != tagOf(b.WireGuard().Public()) {
		t.Fatalf("send frame parsed to %+v, %v", f, err)
	}
	for _, bad := range [][]byte{nil, {PathMagic}, {PathMagic, 2, framePing}, {PathMagic, 1, 99}, send[:relayHeader], appendPing(nil, &ka, a.WireGuard().Public(), txid)[:pingSize-1]} {
		if _, err := parsePathFrame(bad); err == nil {
			t.Fatalf("parsed % x", bad)
		}
	}
	if isSTUN(initMsg(1)) || isSTUN(respMsg(1, 2)) || isSTUN(make([]byte, 32)) {
		t.Fatal("a WireGuard message looks like STUN")
	}
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	if !isSTUN(req.Raw) {
		t.Fatal("a binding request does not look like STUN")
	}
}

// Whatever arrives as a path frame, parsing neither panics nor accepts a
// frame of the wrong size, and what it accepts re-encodes to itself.
func FuzzParsePathFrame(f *testing.F) {
	k := [32]byte{9}
	pub := identity.WGPublicKeyFromRaw([32]byte{5})
	f.Add(appendPing(nil, &k, pub, [txidSize]byte{1}))
	f.Add(appendPong(nil, &k, pub, [txidSize]byte{1}, netip.MustParseAddrPort("10.0.0.1:9")))
	f.Add(appendBind(nil, &k, pub, 1))
	f.Add(appendBound(nil, &k, 1, netip.MustParseAddrPort("[2001:db8::1]:9")))
	f.Add(append(appendRelayHeader(nil, frameSend, [tagSize]byte{1}), 1, 0, 0, 0))
	f.Add(appendRefused(nil, refusedUnbound, [tagSize]byte{2}))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := parsePathFrame(b)
		if err != nil {
			return
		}
		var again []byte
		switch fr.typ {
		case framePing:
			again = append(appendPing(nil, &k, fr.key, fr.txid)[:pingSize-macSize], fr.mac...)
		case framePong:
			again = append(appendPong(nil, &k, fr.key, fr.txid, fr.observed)[:pongSize-macSize], fr.mac...)
		case frameBind:
			again = append(appendBind(nil, &k, fr.key, fr.stamp)[:bindSize-macSize], fr.mac...)
		case frameBound:
			again = append(appendBound(nil, &k, fr.stamp, fr.observed)[:boundSize-macSize], fr.mac...)
		case frameRefused:
			again = appendRefused(nil, fr.reason, fr.tag)
		case frameSend, frameRecv:
			again = append(appendRelayHeader(nil, fr.typ, fr.tag), fr.payload...)
		default:
			t.Fatalf("accepted type %d", fr.typ)
		}
		// An address that is not unspecified re-encodes as given; an
		// unspecified or IPv4-mapped one may not, so compare parses.
		g, err := parsePathFrame(again)
		if err != nil || g.typ != fr.typ || g.key != fr.key || g.txid != fr.txid || g.observed != fr.observed ||
			g.stamp != fr.stamp || g.tag != fr.tag || g.reason != fr.reason || !bytes.Equal(g.payload, fr.payload) {
			t.Fatalf("% x re-encoded to % x", b, again)
		}
	})
}

// Whatever STUN-shaped datagram arrives, the responder and client neither
// panic nor answer anything but a binding request, nor take a response
// they did not ask for.
func FuzzSTUN(f *testing.F) {
	f.Add(stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw)
	f.Add(stun.MustBuild(stun.TransactionID, stun.BindingSuccess, &stun.XORMappedAddress{IP: net.IPv4(1, 2, 3, 4), Port: 5}).Raw)
	f.Add(make([]byte, 20))
	f.Fuzz(func(t *testing.T, b []byte) {
		if !isSTUN(b) {
			return
		}
		s := newSTUNState()
		answered := 0
		s.handle(bytes.Clone(b), netip.MustParseAddrPort("192.0.2.1:7"), time.Now(), func(to netip.AddrPort, resp []byte) {
			answered++
			m := &stun.Message{Raw: resp}
			if err := m.Decode(); err != nil || m.Type != stun.BindingSuccess {
				t.Fatalf("answered with %v, %v", m, err)
			}
		})
		st := s.stats()
		if st.Responses != 0 || uint64(answered) != st.Answered || st.Answered > 1 {
			t.Fatalf("stats %+v after one datagram, %d answers", st, answered)
		}
	})
}

// Every node answers STUN on its socket; a client takes only the answer
// to its own request, from the server it asked.
func TestSTUNOnSocket(t *testing.T) {
	a, b := newCrossNode(t), newCrossNode(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	got, err := a.bind.STUN(ctx, b.addr())
	if err != nil {
		t.Fatal(err)
	}
	if got != a.addr() {
		t.Fatalf("reflexive address %v, want %v", got, a.addr())
	}
	if st := b.bind.STUNStats(); st.Answered != 1 {
		t.Fatalf("server stats %+v", st)
	}
	// An unsolicited response and a malformed message are counted, not taken.
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(a.addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(stun.MustBuild(stun.TransactionID, stun.BindingSuccess, &stun.XORMappedAddress{IP: net.IPv4(6, 6, 6, 6), Port: 6}).Raw)
	// A binding request whose one attribute claims 100 bytes and holds 4.
	bad := []byte{0, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42}
	bad = append(append(bad, make([]byte, txidSize)...), 0, 1, 0, 100, 1, 2, 3, 4)
	c.Write(bad)
	for st := a.bind.STUNStats(); st.Unsolicited != 1 || st.Malformed == 0; st = a.bind.STUNStats() {
		select {
		case <-ctx.Done():
			t.Fatalf("client stats %+v, want one unsolicited, a malformed", st)
		case <-time.After(5 * time.Millisecond):
		}
	}
	rep := Netcheck(ctx, a.bind, nil, []netip.AddrPort{b.addr(), newCrossNode(t).addr()})
	if !rep.UDP || rep.Servers != 2 || rep.MappingVariesByDest {
		t.Fatalf("netcheck on loopback: %+v", rep)
	}
}

// managedPair makes b a managed peer of a and a of b, with paths from
// each side's pp.
func managedPair(t *testing.T, a, b *crossNode, pa, pb *Paths, candA, candB []netip.AddrPort) {
	t.Helper()
	for _, s := range []struct {
		n    *crossNode
		p    *Paths
		peer *crossNode
		c    []netip.AddrPort
	}{{a, pa, b, candB}, {b, pb, a, candA}} {
		if err := s.n.dev.SetPeer(PeerConfig{PublicKey: s.peer.key.Public(), Managed: true}); err != nil {
			t.Fatal(err)
		}
		if err := s.p.SetPeer(PeerPaths{PublicKey: s.peer.key.Public(), Candidates: s.c}); err != nil {
			t.Fatal(err)
		}
	}
}

func newPaths(t *testing.T, n *crossNode, cfg PathsConfig) *Paths {
	t.Helper()
	cfg.PrivateKey = n.key
	p, err := NewPaths(n.bind, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// echo sends msg from a to b's overlay address over UDP until it arrives.
func echo(t *testing.T, ctx context.Context, a, b *crossNode) time.Duration {
	t.Helper()
	pc, err := b.ns.ListenUDP(netip.AddrPortFrom(b.key.Public().Addr(), 7))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := a.ns.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(b.key.Public().Addr(), 7))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	buf := make([]byte, 64)
	for ctx.Err() == nil {
		c.Write([]byte("hello"))
		pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, _, err := pc.ReadFrom(buf); err == nil && string(buf[:n]) == "hello" {
			return time.Since(start)
		}
	}
	t.Fatalf("nothing arrived: %v", ctx.Err())
	return 0
}

func waitPath(t *testing.T, ctx context.Context, p *Paths, peer identity.WGPublicKey, want PathKind) PeerPathStatus {
	t.Helper()
	for {
		st, _ := p.PeerStatus(peer)
		if st.Path == want {
			return st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("path to %s is %+v, want %s", peer.ShortString(), st, want)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Two managed peers on loopback confirm the direct path with pings and
// carry traffic on it; Ping reports the path and a round trip.
func TestPathsDirect(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	a, b := newCrossNode(t), newCrossNode(t)
	pa, pb := newPaths(t, a, PathsConfig{}), newPaths(t, b, PathsConfig{})
	managedPair(t, a, b, pa, pb, []netip.AddrPort{a.addr()}, []netip.AddrPort{b.addr()})
	echo(t, ctx, a, b)
	st := waitPath(t, ctx, pa, b.key.Public(), PathDirect)
	if st.Endpoint != b.addr() || st.LastPong.IsZero() {
		t.Fatalf("status %+v", st)
	}
	r, err := pa.Ping(ctx, b.key.Public())
	if err != nil || r.Path != PathDirect || r.Endpoint != b.addr() || r.RTT <= 0 {
		t.Fatalf("ping: %+v, %v", r, err)
	}
	peers, err := a.dev.Peers()
	if err != nil || len(peers) != 1 || peers[0].Endpoint != b.addr() {
		t.Fatalf("device peers %+v, %v; want the managed endpoint's address", peers, err)
	}
}

// Peers without a direct candidate reach each other through a member
// relay, which refuses a node that is not admitted before any crypto.
func TestPathsRelay(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	r, a, b, c := newCrossNode(t), newCrossNode(t), newCrossNode(t), newCrossNode(t)
	admitted := map[identity.WGPublicKey]bool{a.key.Public(): true, b.key.Public(): true}
	relay, err := NewRelay(r.bind, RelayConfig{PrivateKey: r.key, Admitted: func(k identity.WGPublicKey) bool { return admitted[k] }})
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	srv := []RelayServer{{Addr: r.addr(), PublicKey: r.key.Public()}}
	pa, pb := newPaths(t, a, PathsConfig{Relays: srv}), newPaths(t, b, PathsConfig{Relays: srv})
	pc := newPaths(t, c, PathsConfig{Relays: srv})
	managedPair(t, a, b, pa, pb, nil, nil)
	echo(t, ctx, a, b)
	st := waitPath(t, ctx, pa, b.key.Public(), PathRelay)
	if st.Endpoint != r.addr() || !st.Relay.Equal(r.key.Public()) {
		t.Fatalf("status %+v", st)
	}
	if p, err := pa.Ping(ctx, b.key.Public()); err != nil || p.Path != PathRelay {
		t.Fatalf("ping: %+v, %v", p, err)
	}
	// c binds from the start, every second; its first request may still
	// be on its way.
	for relay.Stats().Refused["not_admitted"] == 0 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	rs := relay.Stats()
	if rs.Clients != 2 || rs.Forwarded == 0 || rs.Refused["not_admitted"] == 0 {
		t.Fatalf("relay stats %+v; want a and b bound, c refused", rs)
	}
	if l := pc.Local(); l.Relays[0].Bound {
		t.Fatalf("non-member bound: %+v", l)
	}
	if l := pa.Local(); !l.Relays[0].Bound || l.Relays[0].Observed != a.addr() {
		t.Fatalf("a's binding %+v", l)
	}
	// Sends from an address without a binding are refused and answered,
	// within the rate.
	u, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(r.addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.Write(append(appendRelayHeader(nil, frameSend, tagOf(b.key.Public())), 4, 0, 0, 0))
	u.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	n, err := u.Read(buf)
	if f, perr := parsePathFrame(buf[:n]); err != nil || perr != nil || f.typ != frameRefused || f.reason != refusedUnbound {
		t.Fatalf("answer % x, %v", buf[:n], err)
	}
}
