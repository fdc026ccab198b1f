package membership

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/agent6/agent6/identity"
)

func TestToken(t *testing.T) {
	key := "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
	for _, s := range []string{
		"agent6://" + key + "@192.0.2.1:51820",
		"agent6://" + key + "@[2001:db8::1]:51820",
		"agent6://" + key + "@192.0.2.1:51820?v=1",
	} {
		tok, err := ParseToken(s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if tok.Key.String() != key || !strings.HasPrefix(s, tok.String()) {
			t.Fatalf("%s: round trip %s", s, tok)
		}
	}
	for _, s := range []string{
		"", "http://" + key + "@1.2.3.4:5", "agent6://" + key, "agent6://nokey@1.2.3.4:5",
		"agent6://" + key + "@host:5", "agent6://" + key + "@1.2.3.4:0", "agent6://" + key + "@0.0.0.0:5",
		"agent6://" + key + "@1.2.3.4:5?v=2",
	} {
		if _, err := ParseToken(s); !errors.Is(err, ErrBadToken) {
			t.Errorf("ParseToken(%q) = %v, want ErrBadToken", s, err)
		}
	}
}

func FuzzParseToken(f *testing.F) {
	f.Add("agent6://HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=@192.0.2.1:51820")
	f.Add("agent6://@")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			return
		}
		if again, err := ParseToken(tok.String()); err != nil || again != tok {
			t.Fatalf("%q: re-parse of %q: %v", s, tok, err)
		}
	})
}

func FuzzDecodeMeta(f *testing.F) {
	k, _ := identity.PrivateKeyFromSeed(make([]byte, 32))
	b, _ := encodeMeta(k, 7, [16]byte{1}, []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:1")})
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMeta(b, nil)
		if err != nil {
			return
		}
		// Whatever verified: the address is the signer's, derived once.
		if a, aerr := m.agentKey.Addr(); aerr != nil || m.addr != a || !m.wgKey.Owns(m.addr) {
			t.Fatalf("meta address %v, signer's %v (%v)", m.addr, a, aerr)
		}
		if len(m.endpoints) > maxEndpoints {
			t.Fatalf("%d endpoints", len(m.endpoints))
		}
	})
}

func FuzzParseRecord(f *testing.F) {
	k, _ := identity.PrivateKeyFromSeed(make([]byte, 32))
	b, _ := newRecord(k, 1, []byte{0x30, 0}, []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:1")}, []byte(`{"name":"x"}`), time.Unix(0, 0))
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRecord(b, false)
		if err == nil && r.addr != r.wgKey.Addr() {
			t.Fatal("record address not derived from its key")
		}
	})
}

func FuzzDecodeState(f *testing.F) {
	f.Add(encodeState([][]byte{{1, 2}}, [][]byte{{3}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeState(b, func(byte, []byte) {})
	})
}

func TestMetaFits(t *testing.T) {
	k, _ := identity.GeneratePrivateKey()
	eps := make([]netip.AddrPort, maxEndpoints+2)
	for i := range eps {
		eps[i] = netip.MustParseAddrPort("[2001:db8::1]:51820")
	}
	b, err := encodeMeta(k, 1<<63, [16]byte{}, eps)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > memberlist.MetaMaxSize {
		t.Fatalf("meta is %d bytes, memberlist allows %d", len(b), memberlist.MetaMaxSize)
	}
	m, err := decodeMeta(b, nil)
	if err != nil || m.seq != 1<<63 || len(m.endpoints) != maxEndpoints || !m.agentKey.Equal(k.Public()) {
		t.Fatalf("decode: %+v %v", m, err)
	}
}

// A memberlist node whose name or address is not its key's address is
// refused by the alive delegate, and counted.
func TestNotifyAliveAddressMismatch(t *testing.T) {
	m := &Membership{ids: newIDTable(netip.Addr{}), refused: map[[16]byte]Reason{}, events: make(chan event, 8),
		metaCache: map[string]*meta{}, metaByAddr: map[netip.Addr]string{}}
	m.log = slog.New(slog.DiscardHandler)
	k, _ := identity.GeneratePrivateKey()
	metaBytes, _ := encodeMeta(k, 1, [16]byte{}, nil)
	own, _ := k.Public().Addr()
	for _, n := range []*memberlist.Node{
		{Name: "2001:21::1", Addr: net.IP(own.AsSlice()), Meta: metaBytes},
		{Name: nodeName(own), Addr: net.ParseIP("2001:21::1"), Meta: metaBytes},
		{Name: nodeName(own), Addr: net.IP(own.AsSlice()), Meta: metaBytes[:len(metaBytes)-1]},
	} {
		if err := (*delegate)(m).NotifyAlive(n); err == nil {
			t.Errorf("NotifyAlive(%s at %s) accepted", n.Name, n.Addr)
		}
	}
	st := m.Stats()
	if st.Refused[ReasonAddrMismatch] != 2 || st.Refused[ReasonBadSignature]+st.Refused[ReasonMalformed] != 1 {
		t.Fatalf("refusals = %v", st.Refused)
	}
	// The genuine one is accepted (and its record asked for).
	if err := (*delegate)(m).NotifyAlive(&memberlist.Node{Name: nodeName(own), Addr: net.IP(own.AsSlice()), Meta: metaBytes}); err != nil {
		t.Fatal(err)
	}
	if ev := <-m.events; ev.kind != evAlive || ev.addr != own {
		t.Fatalf("event %+v", ev)
	}
}

func TestGossipPacketSize(t *testing.T) {
	// 1420: four fragments of 1368 bytes (1372 rounded down to 8) less
	// the UDP header.
	if got, want := gossipPacketSize(1420), 4*1368-8; got != want {
		t.Errorf("gossipPacketSize(1420) = %d, want %d", got, want)
	}
	// The fragments must fit the tunnel: IPv6 header, fragment header
	// and a multiple-of-8 payload per fragment.
	for _, mtu := range []int{1280, 1420, 9000} {
		per := (gossipPacketSize(mtu) + 8) / gossipFragments
		if per%8 != 0 || 40+8+per > mtu {
			t.Errorf("mtu %d: %d bytes per fragment do not fit", mtu, per)
		}
	}
}

func TestGossipSpread(t *testing.T) {
	c := memberlist.DefaultLANConfig() // RetransmitMult 4, GossipInterval 200 ms
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{
		{1, time.Second},                // 4 rounds: 0.8 s, raised to the floor
		{9, time.Second},                // ⌈log10 10⌉ = 1: 4 rounds
		{10, 1600 * time.Millisecond},   // ⌈log10 11⌉ = 2: 8 rounds
		{100, 2400 * time.Millisecond},  // 12 rounds
		{200, 2400 * time.Millisecond},  // 12 rounds
		{1000, 3200 * time.Millisecond}, // ⌈log10 1001⌉ = 4: 16 rounds
	} {
		if got := gossipSpread(c, tc.n); got != tc.want {
			t.Errorf("gossipSpread(n=%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
}

func TestCatchUpTarget(t *testing.T) {
	now := time.Now()
	spread := 2 * time.Second
	a := func(i byte) netip.Addr { return netip.AddrFrom16([16]byte{0x20, 0x01, 0x00, 0x20, 15: i}) }
	peers := map[netip.Addr]*peer{
		a(1): {state: StateAlive, admittedAt: now.Add(-5 * time.Second), catchUps: 2},                                   // known to memberlist
		a(2): {state: StateAlive, admittedAt: now.Add(-4 * time.Second)},                                                // the oldest unknown: picked
		a(3): {state: StateAlive, admittedAt: now.Add(-3 * time.Second)},                                                // unknown, younger
		a(5): {state: StatePending, admittedAt: now.Add(-9 * time.Second)},                                              // not admitted
		a(6): {state: StateAlive, admittedAt: now.Add(-9 * time.Second), catchUpAt: now.Add(-time.Second), catchUps: 3}, // caught up with recently, in vain 3 times
		a(7): {state: StateDead, admittedAt: now.Add(-9 * time.Second)},                                                 // declared dead
	}
	live := map[string]bool{nodeName(a(1)): true}
	if got, _ := catchUpTarget(peers, live, now, spread, time.Time{}); got != a(2) {
		t.Fatalf("target %v, want %v", got, a(2))
	}
	if peers[a(1)].catchUps != 0 {
		t.Fatalf("catch-ups of a peer memberlist knows: %d, want 0", peers[a(1)].catchUps)
	}
	// A catch-up that did not help: the next is due after spread, then
	// twice as long each time.
	for tries, wait := range []time.Duration{spread, 2 * spread, 4 * spread} {
		peers[a(2)].catchUpAt, peers[a(2)].catchUps = now, tries
		if got, _ := catchUpTarget(peers, live, now.Add(wait-time.Millisecond), spread, time.Time{}); got == a(2) {
			t.Fatalf("after %d tries, %v later: %v due already", tries, wait-time.Millisecond, a(2))
		}
		if got, _ := catchUpTarget(peers, live, now.Add(wait), spread, time.Time{}); got != a(2) {
			t.Fatalf("after %d tries, %v later: target %v, want %v", tries, wait, got, a(2))
		}
	}
	peers[a(2)].catchUpAt = now
	if got, _ := catchUpTarget(peers, live, now, spread, time.Time{}); got != a(3) {
		t.Fatalf("with %v just caught up with: target %v, want %v", a(2), got, a(3))
	}
	// Admitted less than a second ago: not due yet.
	peers[a(3)].admittedAt = now.Add(-500 * time.Millisecond)
	if got, _ := catchUpTarget(peers, live, now, spread, time.Time{}); got.IsValid() {
		t.Fatalf("with the only candidate admitted 0.5 s ago: target %v, want none", got)
	}
	peers[a(3)].admittedAt = now.Add(-3 * time.Second)
	// More unknown peers than stragglers: gossip may still be spreading a
	// join storm; none is due while memberlist keeps learning of members.
	for i := byte(10); i < 10+maxStragglers; i++ {
		peers[a(i)] = &peer{state: StateAlive, admittedAt: now.Add(-3 * time.Second)}
	}
	peers[a(6)].admittedAt, peers[a(6)].catchUpAt, peers[a(6)].catchUps = now.Add(-4*time.Second), time.Time{}, 0
	if got, _ := catchUpTarget(peers, live, now, spread, now.Add(-time.Second)); got.IsValid() {
		t.Fatalf("during a storm, news a second ago: target %v, want none", got)
	}
	// Quiet for quietSpreads: the oldest due peer is, a(6) (a(2), older,
	// is still backing off).
	got, storm := catchUpTarget(peers, live, now, spread, now.Add(-quietSpreads*spread))
	if got != a(6) || !storm {
		t.Fatalf("during a storm, quiet for %d spreads: target %v (storm %v), want %v", quietSpreads, got, storm, a(6))
	}
}

// Each peer's signature is checked once: a meta that repeats its verified
// record is taken without its own signature, and a record whose digest a
// verified meta carries is vouched for; anything else is still checked.
func TestSignatureCheckedOncePerPeer(t *testing.T) {
	newM := func() *Membership {
		m := &Membership{ids: newIDTable(netip.Addr{}), refused: map[[16]byte]Reason{},
			metaCache: map[string]*meta{}, metaByAddr: map[netip.Addr]string{}, keyAddr: map[[32]byte]netip.Addr{}}
		m.log = slog.New(slog.DiscardHandler)
		return m
	}
	k, _ := identity.GeneratePrivateKey()
	eps := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:51820")}
	raw, err := newRecord(k, 3, []byte{0x30, 0}, eps, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rec, err := parseRecord(raw, false)
	if err != nil {
		t.Fatal(err)
	}
	forge := func(b []byte) []byte { // the same content, a broken signature
		b = append([]byte(nil), b...)
		b[len(b)-1] ^= 1
		return b
	}

	// Record first: the meta that repeats it needs no signature; one that
	// says anything else does.
	m := newM()
	m.ids.agents[rec.addr] = &peer{rec: rec, state: StatePending}
	same, _ := encodeMeta(k, 3, rec.digest, eps)
	if _, err := m.verifiedMeta(forge(same)); err != nil {
		t.Fatalf("meta implied by the verified record refused: %v", err)
	}
	for name, b := range map[string][]byte{
		"newer sequence":  mustMeta(t, k, 4, rec.digest, eps),
		"other digest":    mustMeta(t, k, 3, [16]byte{1}, eps),
		"other endpoints": mustMeta(t, k, 3, rec.digest, []netip.AddrPort{netip.MustParseAddrPort("192.0.2.2:51820")}),
		"no endpoints":    mustMeta(t, k, 3, rec.digest, nil),
	} {
		if _, err := m.verifiedMeta(forge(b)); reasonOf(err) != ReasonBadSignature {
			t.Errorf("%s, forged: %v, want a bad signature", name, err)
		}
	}

	// Meta first: it vouches for the record it names, and only for it.
	m = newM()
	if _, err := m.verifiedMeta(same); err != nil {
		t.Fatal(err)
	}
	other, _ := newRecord(k, 4, []byte{0x30, 0}, eps, nil, time.Now())
	k2, _ := identity.GeneratePrivateKey()
	stranger, _ := newRecord(k2, 3, []byte{0x30, 0}, eps, nil, time.Now())
	for _, tc := range []struct {
		name string
		raw  []byte
		want bool
	}{{"named record", raw, true}, {"another of its records", other, false}, {"another signer's", stranger, false}, {"short", raw[:10], false}} {
		if got := m.metaVouches(tc.raw); got != tc.want {
			t.Errorf("%s: vouched %v, want %v", tc.name, got, tc.want)
		}
	}
}

func mustMeta(t *testing.T, k identity.PrivateKey, seq uint64, dig [16]byte, eps []netip.AddrPort) []byte {
	t.Helper()
	b, err := encodeMeta(k, seq, dig, eps)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A peer declared dead a while ago, and not alive since, is push/pulled
// with once, through the session it keeps for the grace; one just
// declared dead, or alive again, is not.
func TestCheckDead(t *testing.T) {
	now := time.Now()
	a := func(i byte) netip.Addr { return netip.AddrFrom16([16]byte{0x20, 0x01, 15: i}) }
	m := &Membership{cfg: Config{Peers: nopPeers{}}, rejoin: make(chan netip.Addr, 8), ids: idTable{agents: map[netip.Addr]*peer{
		a(1): {state: StateDead, deadSince: now.Add(-deadCheckAfter)},               // due
		a(2): {state: StateDead, deadSince: now.Add(-deadCheckAfter / 2)},           // too soon
		a(3): {state: StateAlive},                                                   // refuted
		a(4): {state: StateRemoved, deadSince: now.Add(-10 * deadCheckAfter)},       // removed already
		a(5): {state: StateDead, deadSince: now.Add(-time.Minute), deadCheck: true}, // checked
	}}}
	m.checkDead(now)
	m.checkDead(now.Add(deadCheckAfter / 4)) // a(1) again: not twice
	var got []netip.Addr
	for len(m.rejoin) > 0 {
		got = append(got, <-m.rejoin)
	}
	if len(got) != 1 || got[0] != a(1) || m.Stats().CatchUps != 1 {
		t.Fatalf("push/pulled with %v (%d catch-ups), want [%v]", got, m.Stats().CatchUps, a(1))
	}
	m.ids.agents[a(3)].rec = &record{}
	m.markDead(a(3)) // declared dead anew: checked again once due
	m.ids.agents[a(3)].deadSince = now.Add(-2 * deadCheckAfter)
	m.checkDead(now)
	if len(m.rejoin) != 1 || <-m.rejoin != a(3) {
		t.Fatal("a peer declared dead again was not checked")
	}
}

type sentFrames struct{ to []netip.AddrPort }

func (s *sentFrames) SendControl(to netip.AddrPort, _ []byte) error {
	s.to = append(s.to, to)
	return nil
}

// A peer removed as dead is sent a HELLO 1, 2, 4, 8 and 16 s after its
// removal, then every ReconnectInterval; a peer that left is not.
func TestHelloDead(t *testing.T) {
	sent := &sentFrames{}
	m := &Membership{cfg: Config{Control: sent, ReconnectInterval: 10 * time.Second}, ids: newIDTable(netip.Addr{}), asked: newExpiring[nonce, askedHello](8)}
	m.log = slog.New(slog.DiscardHandler)
	dead, left := netip.MustParseAddr("2001:21::1"), netip.MustParseAddr("2001:21::2")
	ep := netip.MustParseAddrPort("192.0.2.1:51820")
	for _, a := range []netip.Addr{dead, left} {
		m.ids.agents[a] = &peer{state: StateAlive, endpoint: ep, rec: &record{}}
	}
	m.cfg.Peers = nopPeers{}
	m.remove(dead, StateRemoved)
	m.remove(left, StateLeft)
	t0 := m.ids.agents[dead].deadSince
	var at []time.Duration
	for s := time.Duration(0); s <= 50*time.Second; s += 500 * time.Millisecond {
		before := len(sent.to)
		m.helloDead(t0.Add(s))
		if len(sent.to) > before {
			at = append(at, s)
		}
	}
	want := []time.Duration{1, 2, 4, 8, 16, 26, 36, 46}
	if len(at) != len(want) {
		t.Fatalf("HELLOs at %v, want at %v s", at, want)
	}
	for i := range want {
		if at[i] != want[i]*time.Second {
			t.Fatalf("HELLOs at %v, want at %v s", at, want)
		}
	}
	for _, to := range sent.to {
		if to != ep {
			t.Fatalf("HELLO to %v, want %v", to, ep)
		}
	}
}

type nopPeers struct{}

func (nopPeers) SetPeer(identity.WGPublicKey, netip.AddrPort, []netip.Prefix) error { return nil }
func (nopPeers) AllowTask(identity.WGPublicKey, netip.Addr, bool) error             { return nil }
func (nopPeers) RemovePeer(identity.WGPublicKey) error                              { return nil }
func (nopPeers) Received() (map[identity.WGPublicKey]uint64, error)                 { return nil, nil }
func (nopPeers) Await(netip.Addr)                                                   {}
func (nopPeers) EndAwait(netip.Addr, bool)                                          {}

// Reconciling with memberlist removes an admitted peer it no longer lists,
// but not one it declared dead within the grace (removeDead's, later), nor
// one admitted too recently for memberlist to have heard of it.
func TestRemoveUnlisted(t *testing.T) {
	now := time.Now()
	long := now.Add(-time.Minute)
	a := func(i byte) netip.Addr { return netip.AddrFrom16([16]byte{0x20, 0x01, 15: i}) }
	m := &Membership{cfg: Config{ReconnectInterval: 2 * time.Second}, ids: idTable{agents: map[netip.Addr]*peer{
		a(1): {state: StateAlive, admittedAt: long, rec: &record{}},                  // unlisted: removed
		a(2): {state: StateDead, admittedAt: long, deadSince: now, rec: &record{}},   // in its grace
		a(3): {state: StateAlive, admittedAt: now.Add(-time.Second), rec: &record{}}, // just admitted
		a(4): {state: StateAlive, admittedAt: long, rec: &record{}},                  // listed
		a(5): {state: StateLeft, admittedAt: long, deadSince: long, rec: &record{}},  // gone already
	}}}
	m.log = slog.New(slog.DiscardHandler)
	m.cfg.Peers = nopPeers{}
	m.removeUnlisted(now, map[string]bool{nodeName(a(4)): true})
	for i, want := range map[byte]bool{1: false, 2: true, 3: true, 4: true, 5: false} {
		if got := m.ids.agents[a(i)].admitted(); got != want {
			t.Errorf("peer %d admitted = %v, want %v", i, got, want)
		}
	}
	if m.ids.agents[a(1)].state != StateRemoved {
		t.Errorf("unlisted peer's state %v, want removed", m.ids.agents[a(1)].state)
	}
}

// talkingPeers is a WireGuard whose peers received what rx says.
type talkingPeers struct {
	nopPeers
	rx      map[identity.WGPublicKey]uint64
	removed []identity.WGPublicKey
}

func (p *talkingPeers) Received() (map[identity.WGPublicKey]uint64, error) { return p.rx, nil }
func (p *talkingPeers) RemovePeer(k identity.WGPublicKey) error {
	p.removed = append(p.removed, k)
	return nil
}

// A peer memberlist declared dead is removed after the grace, unless
// WireGuard received from it meanwhile: then it is kept, counted, and
// looked at again a grace later.
func TestRemoveDeadUnlessTalking(t *testing.T) {
	keyOf := func(i byte) identity.WGPublicKey { return identity.WGPublicKeyFromRaw([32]byte{i}) }
	a := func(i byte) netip.Addr { return keyOf(i).Addr() }
	wg := &talkingPeers{rx: map[identity.WGPublicKey]uint64{keyOf(1): 100, keyOf(2): 100}}
	c := memberlist.DefaultLANConfig()
	m := &Membership{cfg: Config{Peers: wg}, mlConf: c, ids: newIDTable(netip.Addr{})}
	m.log = slog.New(slog.DiscardHandler)
	for i := byte(1); i <= 2; i++ {
		m.ids.agents[a(i)] = &peer{state: StateAlive, rec: &record{wgKey: keyOf(i)}}
		m.markDead(a(i))
	}
	wg.rx[keyOf(1)] = 500 // still talking
	grace := gossipSpread(c, 0)
	now := time.Now().Add(grace)
	m.removeDeadAt(now, 0)
	if len(wg.removed) != 1 || wg.removed[0] != keyOf(2) {
		t.Fatalf("removed %v, want only the silent peer", wg.removed)
	}
	if p := m.ids.agents[a(1)]; p.state != StateDead || !p.admitted() || m.Stats().DeathsOverruled != 1 {
		t.Fatalf("talking peer: %v, overruled %d", p.state, m.Stats().DeathsOverruled)
	}
	// Silent from then on: removed a grace later.
	m.removeDeadAt(now.Add(grace), 0)
	if len(wg.removed) != 2 || m.ids.agents[a(1)].state != StateRemoved {
		t.Fatalf("removed %v; state %v", wg.removed, m.ids.agents[a(1)].state)
	}
}
