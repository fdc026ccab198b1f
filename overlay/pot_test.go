package overlay

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"testing"

	"github.com/agent6/agent6/identity"
)

// AES-CMAC against RFC 4493 §4's test vectors.
func TestCMACVectors(t *testing.T) {
	key, _ := hex.DecodeString("2b7e151628aed2a6abf7158809cf4f3c")
	msg, _ := hex.DecodeString("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
	k := newPotKey(key)
	if got := hex.EncodeToString(k.k1[:]) + hex.EncodeToString(k.k2[:]); got != "fbeed618357133667c85e08f7236a8de"+"f7ddac306ae266ccf90bc11ee46d513b" {
		t.Fatalf("subkeys %s", got)
	}
	var s potScratch
	for _, tc := range []struct {
		n    int
		want string
	}{
		{0, "bb1d6929e95937287fa37d129b756746"},
		{16, "070a16b46b4d4144f79bdd9dd04a287c"},
		{40, "dfa66747de9ae63030ca32611497c827"},
		{64, "51f0bebf7e3b9d92fc49741779363cfe"},
	} {
		k.cmac(&s, msg[:tc.n])
		if got := hex.EncodeToString(s.x[:]); got != tc.want {
			t.Errorf("CMAC of %d bytes = %s, want %s", tc.n, got, tc.want)
		}
	}
}

// testAgent is an agent of the proof-of-transit and path tests: a key and
// its address.
type testAgent struct {
	priv identity.WGPrivateKey
	pub  identity.WGPublicKey
	addr netip.Addr
}

func newTestAgent(seed byte) testAgent {
	s := make([]byte, 32)
	s[0], s[31] = seed, 0xa6
	k, _ := identity.PrivateKeyFromSeed(s)
	w := k.WireGuard()
	return testAgent{priv: w, pub: w.Public(), addr: w.Public().Addr()}
}

func (a testAgent) waypoint() Waypoint { return Waypoint{Addr: a.addr, Key: a.pub} }

// stampAs fills waypoint j's slot of the SRv6 packet pkt as agent w would,
// for destination d, and moves the packet on as w's filter does.
func stampAs(t testing.TB, pkt []byte, w, d testAgent) {
	t.Helper()
	var r keyring
	r.set(w.priv)
	k, err := r.key(d.pub, roleWaypoint)
	if err != nil {
		t.Fatal(err)
	}
	var v srv6View
	if err := parseSRv6(pkt, &v); err != nil {
		t.Fatal(err)
	}
	j := v.hop()
	var prev []byte
	if j > 0 {
		prev = append([]byte(nil), v.stamp(j-1)...)
	}
	var s potScratch
	k.stamp(&s, &v, j, prev, pkt[v.stamps+stampLen*j:])
	next := v.segment(v.sl - 1)
	pkt[ipv6HeaderLen+3]--
	wa := w.addr.As16()
	copy(pkt[8:24], wa[:])
	copy(pkt[24:40], next)
}

// The stamp chain a destination verifies: the right waypoints in the
// right order pass; a missing, reordered, forged, replayed or misplaced
// stamp fails, as does one bound to another flow or sequence number.
func TestTransitProofChain(t *testing.T) {
	a, w1, w2, d, e := newTestAgent(1), newTestAgent(2), newTestAgent(3), newTestAgent(4), newTestAgent(5)
	f := NewFilter(&fakeTUN{}, FilterConfig{Local: d.addr})
	defer f.Close()
	f.keys.set(d.priv)
	for _, p := range []testAgent{a, w1, w2, e} {
		f.setPeerAddrs(p.pub, []netip.Prefix{netip.PrefixFrom(p.addr, 128)})
	}
	inner := udp6(a.addr, d.addr, 40000, 8080, 1000)
	seq := uint64(1000)
	// through sends inner through the waypoints ws, each stamping, and
	// returns the packet as it reaches d.
	through := func(ws ...testAgent) []byte {
		seq++
		addrs := make([]netip.Addr, len(ws))
		for i, w := range ws {
			addrs[i] = w.addr
		}
		pkt := buildSRv6(inner, addrs, seq)
		for _, w := range ws {
			stampAs(t, pkt, w, d)
		}
		return pkt
	}
	fl := &flow{}
	check := func(name string, pkt []byte, need []testAgent, want DropReason) {
		t.Helper()
		var sr srv6State
		if err := parseSRv6(pkt, &sr.v); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var wps []Waypoint
		for _, w := range need {
			wps = append(wps, w.waypoint())
		}
		fl.in.Store(f.newInRoute(wps, 0))
		f.flows.mu.RLock()
		got := f.arrival(fl, &sr.v.info, &sr.v, &sr, 0)
		f.flows.mu.RUnlock()
		if got != want {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
	f.cfg.Via = staticVia{} // arrival consults the flow's cached answer
	both := []testAgent{w1, w2}

	good := through(w1, w2)
	check("W1 then W2", good, both, dropNone)
	check("the same packet again (replay)", good, both, DropTransitProof)

	p := through(w1, w2)
	p[len(p)-len(inner)-1] ^= 1 // the last byte of W2's stamp
	check("forged stamp", p, both, DropTransitProof)

	p = through(w1, w2)
	var v srv6View
	parseSRv6(p, &v)
	s0, s1 := append([]byte(nil), v.stamp(0)...), append([]byte(nil), v.stamp(1)...)
	copy(v.stamp(0), s1)
	copy(v.stamp(1), s0)
	check("stamps swapped", p, both, DropTransitProof)

	p = through(w1, w2)
	parseSRv6(p, &v)
	clear(v.stamp(0))
	check("first stamp missing", p, both, DropTransitProof)

	// E stamps W1's slot with its own key: it shares none with d as W1.
	p = buildSRv6(inner, []netip.Addr{w1.addr, w2.addr}, 5000)
	stampAs(t, p, e, d)
	copy(p[8:24], w1.addr.AsSlice()) // and claims W1 sent it on
	stampAs(t, p, w2, d)
	check("stamp by an impostor", p, both, DropTransitProof)

	p = through(w1, w2)
	parseSRv6(p, &v)
	v.pkt[v.seqOff+7] ^= 1
	check("sequence changed", p, both, DropTransitProof)

	p = through(w1, w2)
	parseSRv6(p, &v)
	v.pkt[v.inner+ipv6HeaderLen+1] ^= 1 // the inner source port
	check("flow changed", p, both, DropTransitProof)

	check("W2 then W1", through(w2, w1), both, DropWaypointOrder)
	check("W2 only", through(w2), both, DropWaypointBypassed)
	check("W1 only", through(w1), both, DropWaypointBypassed)
	check("W1 only, as required", through(w1), []testAgent{w1}, dropNone)
	check("an extra waypoint", through(e, w1, w2), both, dropNone)

	p = through(w1, w2)
	copy(p[8:24], a.addr.AsSlice()) // arrived from A, not from W2
	check("not from the last waypoint", p, both, DropTransitProof)

	// An old sequence number, accepted before, or beyond the window.
	seq = 1
	check("far behind the window", through(w1, w2), both, DropTransitProof)
}

// staticVia is a Via that answers from maps, by destination for
// outbound flows and by source for inbound ones.
type staticVia struct {
	out map[netip.Addr][]Waypoint
	in  map[netip.Addr][]Waypoint
	bad map[netip.Addr]bool // destinations with no reachable waypoint
}

func (p staticVia) Outbound(t Tuple) ([]Waypoint, error) {
	if p.bad[t.Dst.Addr()] {
		return nil, ErrNoWaypoint
	}
	return p.out[t.Dst.Addr()], nil
}

func (p staticVia) Inbound(t Tuple) []Waypoint { return p.in[t.Src.Addr()] }

func TestReplayWindow(t *testing.T) {
	var w replayWindow
	for _, tc := range []struct {
		seq  uint64
		want bool
	}{
		{1000, true}, {1000, false}, {999, true}, {1002, true}, {1001, true}, {1001, false},
		{1000 + 5000, true}, {1000, false}, {6000 - 900, true}, {6000 - 1000, false}, {6000 - 900, false},
		{1 << 40, true}, {1<<40 - 1, true}, {1<<40 + 64*16, true}, {1<<40 + 64*16 - 1, true}, {1 << 40, false},
	} {
		if got := w.accept(tc.seq); got != tc.want {
			t.Fatalf("accept(%d) = %v, want %v", tc.seq, got, tc.want)
		}
	}
}

// The key a waypoint derives for a destination is the one the destination
// derives for it, and no other pair's.
func TestTransitKeys(t *testing.T) {
	w, d, e := newTestAgent(2), newTestAgent(4), newTestAgent(5)
	var rw, rd, re keyring
	rw.set(w.priv)
	rd.set(d.priv)
	re.set(e.priv)
	kw, _ := rw.key(d.pub, roleWaypoint)
	kd, _ := rd.key(w.pub, roleDestination)
	kdSwapped, _ := rd.key(w.pub, roleWaypoint) // d as waypoint for w: another key
	ke, _ := re.key(d.pub, roleWaypoint)
	var s potScratch
	msg := make([]byte, 64)
	tag := func(k *potKey) []byte { k.cmac(&s, msg); return append([]byte(nil), s.x[:]...) }
	if !bytes.Equal(tag(kw), tag(kd)) {
		t.Fatal("waypoint and destination derived different keys")
	}
	if bytes.Equal(tag(kw), tag(kdSwapped)) || bytes.Equal(tag(kw), tag(ke)) {
		t.Fatal("keys of different roles or pairs are equal")
	}
	var zero identity.WGPublicKey
	if _, err := rw.key(zero, roleWaypoint); err == nil {
		t.Fatal("derived a key with the all-zero public key (a low-order point)")
	}
}

// BenchmarkTransitProof measures the proof of transit per packet with a
// 1,380-byte inner packet: a waypoint's stamp, and a destination's
// verification of one and of two stamps (keys cached, as they are after
// the flow's first packet).
func BenchmarkTransitProof(b *testing.B) {
	a, w1, w2, d := newTestAgent(1), newTestAgent(2), newTestAgent(3), newTestAgent(4)
	inner := udp6(a.addr, d.addr, 40000, 8080, 1380-48)
	var r keyring
	r.set(w1.priv)
	k, _ := r.key(d.pub, roleWaypoint)
	b.Run("stamp", func(b *testing.B) {
		pkt := buildSRv6(inner, []netip.Addr{w1.addr, w2.addr}, 1)
		var v srv6View
		parseSRv6(pkt, &v)
		s := new(potScratch)
		b.ReportAllocs()
		for b.Loop() {
			k.stamp(s, &v, 0, nil, v.stamp(0))
		}
	})
	f := NewFilter(&fakeTUN{}, FilterConfig{Local: d.addr})
	defer f.Close()
	f.keys.set(d.priv)
	for _, p := range []testAgent{w1, w2} {
		f.setPeerAddrs(p.pub, []netip.Prefix{netip.PrefixFrom(p.addr, 128)})
	}
	for _, ws := range [][]testAgent{{w1}, {w1, w2}} {
		name := "verify-1"
		if len(ws) == 2 {
			name = "verify-2"
		}
		b.Run(name, func(b *testing.B) {
			addrs := []netip.Addr{}
			for _, w := range ws {
				addrs = append(addrs, w.addr)
			}
			pkt := buildSRv6(inner, addrs, 1)
			for _, w := range ws {
				stampAs(b, pkt, w, d)
			}
			var v srv6View
			parseSRv6(pkt, &v)
			s := new(potScratch)
			if !f.verifyChain(s, &v, nil) {
				b.Fatal("chain does not verify")
			}
			b.ReportAllocs()
			for b.Loop() {
				f.verifyChain(s, &v, nil)
			}
		})
	}
}
