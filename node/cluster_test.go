package node_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/goleak"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/membership"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// org is a test organisation: a CA and the bundle that trusts it.
type org struct {
	ca     *identity.CA
	bundle *identity.Bundle

	mu    sync.Mutex
	nodes []*node.Node // closed together, in parallel, when the test ends
}

func newOrg(t testing.TB, domain string) *org {
	t.Helper()
	// The CA dates from three hours ago, so that tests can issue
	// credentials that have already expired.
	ca, err := identity.NewCA(domain, 24*time.Hour, time.Now().Add(-3*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	b, err := identity.ParseBundle(ca.CertificatePEM())
	if err != nil {
		t.Fatal(err)
	}
	o := &org{ca: ca, bundle: b}
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, n := range o.nodes {
			wg.Go(func() { n.Close() })
		}
		wg.Wait()
	})
	return o
}

// issue makes a key and a credential for it.
func (o *org) issue(t testing.TB, name string, ttl time.Duration, roles ...string) (identity.PrivateKey, []byte) {
	t.Helper()
	k, _ := identity.GeneratePrivateKey()
	der, err := o.ca.Issue(identity.IssueRequest{Key: k.Public(), Name: name, Roles: roles, TTL: ttl}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return k, der
}

// fastGossip keeps memberlist's failure-detector timing (LAN defaults:
// probe every 1 s, 500 ms timeout) and shortens only the dissemination
// intervals, so tests converge quickly without false positives under -race.
func fastGossip(c *memberlist.Config) {
	c.GossipInterval = 100 * time.Millisecond
	c.PushPullInterval = 5 * time.Second
}

// testLogger logs to stderr at debug level when AGENT6_TEST_LOG is set,
// each line with the test's name and the node's (if given).
func testLogger(t testing.TB, node ...string) *slog.Logger {
	if os.Getenv("AGENT6_TEST_LOG") == "" {
		return nil
	}
	l := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("t", t.Name())
	if len(node) > 0 {
		l = l.With("node", node[0])
	}
	return l
}

// member starts an embedded node with a credential from o.
func (o *org) member(t testing.TB, name string, bundle *identity.Bundle, join ...string) *node.Node {
	t.Helper()
	k, der := o.issue(t, name, time.Hour)
	n := &node.Node{
		Key: k, Credential: der, Bundle: bundle, Join: join,
		Endpoints:  []netip.AddrPort{netip.AddrPortFrom(loopback, 0)},
		TuneGossip: fastGossip,
		Logger:     testLogger(t, name),

		ReconnectInterval: 2 * time.Second,
	}
	if err := n.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	o.mu.Lock()
	o.nodes = append(o.nodes, n)
	o.mu.Unlock()
	return n
}

func invite(t testing.TB, n *node.Node) string {
	t.Helper()
	tok, err := n.Invite()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// verifyNoLeaks fails t if goroutines other than those opts ignore are
// still running 3 s from now. goleak.VerifyNone alone waits about half a
// second, but memberlist's Shutdown does not wait for a probe in flight,
// which ends on its ack timeout, within ProbeInterval (1 s) of Shutdown:
// under a loaded CI that probe was reported as a leak. A goroutine that
// never ends is still caught.
func verifyNoLeaks(t testing.TB, opts ...goleak.Option) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		err := goleak.Find(opts...)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Error(err)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func admitted(n *node.Node) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	for _, m := range n.Members() {
		if m.State == "alive" || m.State == "suspect" {
			out[m.Addr] = true
		}
	}
	return out
}

func fullMesh(nodes []*node.Node) bool {
	for _, n := range nodes {
		a := admitted(n)
		for _, o := range nodes {
			if o != n && !a[o.Addr()] {
				return false
			}
		}
	}
	return true
}

// echo serves TCP echo on port 7 of n.
func echo(t testing.TB, n *node.Node) {
	ln, err := n.Listen("tcp", ":7")
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
}

func exchange(ctx context.Context, from, to *node.Node) error {
	c, err := from.Dial(ctx, "tcp", netip.AddrPortFrom(to.Addr(), 7).String())
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	msg := fmt.Sprintf("%s->%s", from.Addr(), to.Addr())
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q", buf)
	}
	return nil
}

func TestClusterSmall(t *testing.T) {
	o := newOrg(t, "example.org")
	seed := o.member(t, "seed", o.bundle)
	tok := invite(t, seed)
	nodes := []*node.Node{seed}
	for i := range 3 {
		nodes = append(nodes, o.member(t, fmt.Sprintf("agent-%d", i), o.bundle, tok))
	}
	waitFor(t, 20*time.Second, "full mesh", func() bool { return fullMesh(nodes) })
	for _, n := range nodes {
		echo(t, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := exchange(ctx, nodes[1], nodes[3]); err != nil {
		t.Fatal(err)
	}
	m := nodes[1].Members()
	for _, mb := range m {
		if mb.TrustDomain != "example.org" || mb.ID == "" {
			t.Fatalf("member without identity: %+v", mb)
		}
	}
	// WhoIs answers with the organisation identity, both ways.
	who, err := nodes[3].WhoIs(nodes[1].Addr())
	if err != nil || who.ID != "spiffe://example.org/agent/agent-0" || who.TrustDomain != "example.org" || !who.PublicKey.Equal(nodes[1].PublicKey()) {
		t.Fatalf("WhoIs = %+v, %v", who, err)
	}
	if self, _ := nodes[3].WhoIs(nodes[3].Addr()); !self.Self || self.ID != "spiffe://example.org/agent/agent-2" {
		t.Fatalf("WhoIs(self) = %+v", self)
	}
}

// Thirty embedded nodes join through one seed; every node admits every
// other, and a sample of pairs proves a WireGuard session by a TCP echo.
func TestCluster30(t *testing.T) {
	if testing.Short() {
		t.Skip("30-node cluster in -short mode")
	}
	o := newOrg(t, "example.org")
	seed := o.member(t, "seed", o.bundle)
	tok := invite(t, seed)
	nodes := []*node.Node{seed}
	var mu sync.Mutex
	var wg sync.WaitGroup
	begin := time.Now()
	for i := range 29 {
		wg.Go(func() {
			n := o.member(t, fmt.Sprintf("agent-%02d", i), o.bundle, tok)
			mu.Lock()
			nodes = append(nodes, n)
			mu.Unlock()
		})
	}
	wg.Wait()
	t.Logf("29 nodes up in %v", time.Since(begin).Round(time.Millisecond))
	start := time.Now()
	waitFor(t, 60*time.Second, "30-node full mesh", func() bool {
		if fullMesh(nodes) {
			return true
		}
		if time.Since(start) > 55*time.Second {
			for i, n := range nodes {
				states := map[string]int{}
				for _, m := range n.Members() {
					states[m.State]++
				}
				t.Logf("node %d: %v %+v", i, states, n.Membership().Stats())
			}
		}
		return false
	})
	t.Logf("30 nodes converged %v after the last Up", time.Since(start).Round(time.Millisecond))
	for _, n := range nodes {
		echo(t, n)
	}
	// Every node talks to its successor and to one across the ring: 60
	// ordered pairs, each side having learnt the other only through gossip.
	start = time.Now()
	for i, n := range nodes {
		for _, j := range []int{(i + 1) % len(nodes), (i + len(nodes)/2) % len(nodes)} {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			t0 := time.Now()
			err := exchange(ctx, n, nodes[j])
			cancel()
			if err != nil {
				t.Fatalf("%d -> %d: %v\n%s", i, j, err, pairState(n, nodes[j]))
			}
			if d := time.Since(t0); d > time.Second {
				t.Logf("%d -> %d (%s -> %s) took %v, until %s", i, j, n.Addr(), nodes[j].Addr(), d.Round(time.Millisecond), time.Now().Format("15:04:05.000"))
			}
		}
	}
	t.Logf("60 exchanges in %v", time.Since(start).Round(time.Millisecond))
	var hs node.HandshakeStatus
	for _, n := range nodes {
		st, err := n.Status()
		if err != nil {
			t.Fatal(err)
		}
		hs = hs.Plus(st.Handshakes)
	}
	t.Logf("handshakes: %+v", hs)
}

// pairState describes what a and b know of each other, for a failed
// exchange: admission, the WireGuard peer (endpoint, last handshake,
// bytes) and the filter's drops on each side.
func pairState(a, b *node.Node) string {
	var out string
	for _, side := range [][2]*node.Node{{a, b}, {b, a}} {
		self, other := side[0], side[1]
		st, err := self.Status()
		if err != nil {
			out += fmt.Sprintf("%s: %v\n", self.Addr(), err)
			continue
		}
		peer := "no WireGuard peer"
		for _, p := range st.Peers {
			if p.Addr == other.Addr() {
				hs := "never"
				if p.LastHandshake != nil {
					hs = time.Since(*p.LastHandshake).Round(time.Millisecond).String() + " ago"
				}
				peer = fmt.Sprintf("endpoint %v, handshake %s, rx %d tx %d", p.Endpoint, hs, p.RxBytes, p.TxBytes)
			}
		}
		var refused map[string]uint64
		if st.Membership != nil {
			refused = st.Membership.Refused
		}
		out += fmt.Sprintf("%s sees %s: admitted %v, %s; drops %v; netstack %+v; refused %v\n",
			self.Addr(), other.Addr(), admitted(self)[other.Addr()], peer, st.Filter.Drops, st.Netstack, refused)
	}
	return out
}

// sendHello sends a raw control frame to n's UDP port from a loopback
// socket, as a hostile or broken agent would.
func sendHello(t *testing.T, n *node.Node, frame []byte) {
	t.Helper()
	port, _ := n.UDPPort()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback, port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(frame); err != nil {
		t.Fatal(err)
	}
}

func refused(n *node.Node, r membership.Reason) uint64 { return n.Membership().Stats().Refused[r] }

// Bad records of every kind are refused, counted by reason, and the node
// keeps serving its peers.
func TestAdmissionRefusals(t *testing.T) {
	o := newOrg(t, "example.org")
	seed := o.member(t, "seed", o.bundle)
	peer := o.member(t, "peer", o.bundle, invite(t, seed))
	waitFor(t, 20*time.Second, "pair", func() bool { return fullMesh([]*node.Node{seed, peer}) })
	echo(t, seed)
	loop := []netip.AddrPort{netip.AddrPortFrom(loopback, 1)}
	now := time.Now()
	record := func(k identity.PrivateKey, seq uint64, cred []byte) []byte {
		r, err := membership.SignAgentRecord(k, seq, cred, loop, now)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	check := func(what string, r membership.Reason, frame []byte) {
		t.Helper()
		before := refused(seed, r)
		sendHello(t, seed, frame)
		waitFor(t, 5*time.Second, what+" refused as "+string(r), func() bool { return refused(seed, r) > before })
	}
	hello := func(k identity.PrivateKey, record []byte) []byte {
		t.Helper()
		f, err := membership.HelloFrame(k, record, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return f
	}

	// A credential from a CA the seed does not trust.
	rogue := newOrg(t, "evil.example")
	k, der := rogue.issue(t, "mallory", time.Hour)
	check("untrusted CA", membership.ReasonUntrusted, hello(k, record(k, 1, der)))

	// An expired credential from the right CA.
	k, _ = identity.GeneratePrivateKey()
	old, err := o.ca.Issue(identity.IssueRequest{Key: k.Public(), Name: "old", TTL: time.Hour}, now.Add(-2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	check("expired credential", membership.ReasonExpired, hello(k, record(k, 1, old)))

	// A record signed by one key carrying another key's credential: its
	// address would not be the credential's.
	k1, _ := identity.GeneratePrivateKey()
	_, der2 := o.issue(t, "victim", time.Hour)
	check("someone else's credential", membership.ReasonKeyMismatch, hello(k1, record(k1, 1, der2)))

	// A forged HELLO: one flipped bit in its signature.
	k, der = o.issue(t, "forged", time.Hour)
	forged := hello(k, record(k, 1, der))
	forged[len(forged)-1] ^= 1
	check("forged HELLO", membership.ReasonBadSignature, forged)

	// A replayed record with an older sequence number than one admitted.
	k, der = o.issue(t, "replayed", time.Hour)
	sendHello(t, seed, hello(k, record(k, 10, der)))
	kAddr, _ := k.Public().Addr()
	waitFor(t, 5*time.Second, "record seq 10 admitted", func() bool {
		// Admitted through HELLO; it never gossips, so memberlist calls it
		// pending, but the WireGuard peer is there.
		m, ok := seed.Membership().Lookup(kAddr)
		return ok && m.State == "alive"
	})
	check("older record", membership.ReasonStale, hello(k, record(k, 5, der)))

	// Garbage on the control channel.
	check("malformed frame", membership.ReasonMalformed, []byte{0xa6, 9, 9, 9})

	// None of it was admitted, and the seed still serves its real peer.
	for _, m := range seed.Members() {
		if m.State == "alive" && m.Addr != peer.Addr() && m.Addr != kAddr {
			t.Errorf("refused agent admitted: %+v", m)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := exchange(ctx, peer, seed); err != nil {
		t.Fatalf("seed stopped serving after bad input: %v\n%s", err, pairState(peer, seed))
	}
}

// A node with an untrusted credential cannot join at all.
func TestUntrustedNodeCannotJoin(t *testing.T) {
	o := newOrg(t, "example.org")
	seed := o.member(t, "seed", o.bundle)
	rogue := newOrg(t, "evil.example")
	both, err := identity.ParseBundle(append(o.ca.CertificatePEM(), rogue.ca.CertificatePEM()...))
	if err != nil {
		t.Fatal(err)
	}
	m := rogue.member(t, "mallory", both, invite(t, seed))
	select {
	case <-m.Joined():
		t.Fatal("untrusted node joined")
	case <-time.After(3 * time.Second):
	}
	if refused(seed, membership.ReasonUntrusted) == 0 {
		t.Fatal("seed did not count the untrusted HELLO")
	}
	if len(admitted(seed)) != 0 {
		t.Fatalf("seed admitted %v", admitted(seed))
	}
}

// A revocation injected at one node reaches every node, and the revoked
// agent is removed everywhere: membership and WireGuard.
func TestRevocation(t *testing.T) {
	o := newOrg(t, "example.org")
	seed := o.member(t, "seed", o.bundle)
	tok := invite(t, seed)
	nodes := []*node.Node{seed}
	for i := range 4 {
		nodes = append(nodes, o.member(t, fmt.Sprintf("agent-%d", i), o.bundle, tok))
	}
	waitFor(t, 20*time.Second, "full mesh", func() bool { return fullMesh(nodes) })
	victim := nodes[4]
	rev, err := o.ca.Revoke(victim.Credential, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nodes[1].Revoke(rev.Marshal()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "revocation everywhere", func() bool {
		for _, n := range nodes[:4] {
			if admitted(n)[victim.Addr()] {
				return false
			}
			st, _ := n.Status()
			for _, p := range st.Peers {
				if p.Addr == victim.Addr() {
					return false
				}
			}
		}
		return true
	})
	for _, mb := range seed.Members() {
		if mb.Addr == victim.Addr() && mb.State != "revoked" {
			t.Fatalf("victim state %q, want revoked", mb.State)
		}
	}
	// A forged revocation (signed by an agent, not the CA) is refused.
	k, _ := identity.GeneratePrivateKey()
	fake, _ := identity.SignRecord(k, identity.RecordRevocation, []byte(`{"v":1}`))
	if _, err := seed.Revoke(fake.Marshal()); err == nil {
		t.Fatal("forged revocation accepted")
	}
	if refused(seed, membership.ReasonBadRevocation) == 0 {
		t.Fatal("forged revocation not counted")
	}
}

// A node that leaves is removed from every peer, and a node restarted with
// the same key rejoins.
func TestLeaveAndRejoin(t *testing.T) {
	o := newOrg(t, "example.org")
	seed := o.member(t, "seed", o.bundle)
	tok := invite(t, seed)
	a := o.member(t, "a", o.bundle, tok)
	k, der := o.issue(t, "b", time.Hour)
	start := func() *node.Node {
		n := &node.Node{Key: k, Credential: der, Bundle: o.bundle, Join: []string{tok},
			Endpoints: []netip.AddrPort{netip.AddrPortFrom(loopback, 0)}, TuneGossip: fastGossip, Logger: testLogger(t)}
		if err := n.Up(context.Background()); err != nil {
			t.Fatal(err)
		}
		return n
	}
	b := start()
	nodes := []*node.Node{seed, a, b}
	waitFor(t, 20*time.Second, "full mesh", func() bool { return fullMesh(nodes) })
	b.Close()
	// A graceful leave: b tells its peers through WireGuard, so each
	// removes it at once and shows it as left, not dead.
	left := func(n *node.Node) bool {
		for _, m := range n.Members() {
			if m.Addr == b.Addr() {
				return m.State == "left"
			}
		}
		return false
	}
	waitFor(t, 5*time.Second, "b removed and shown as left", func() bool {
		return !admitted(seed)[b.Addr()] && !admitted(a)[b.Addr()] && left(seed) && left(a)
	})
	b = start()
	defer b.Close()
	waitFor(t, 20*time.Second, "b back", func() bool { return fullMesh([]*node.Node{seed, a, b}) })
	echo(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := exchange(ctx, a, b); err != nil {
		t.Fatalf("%v\n%s", err, pairState(a, b))
	}
}

// A node whose credential is revoked learns it from the peer that refuses
// it — the CA-signed revocation, which it verifies — says so in its
// status, and stops trying to join.
func TestRevokedNodeIsTold(t *testing.T) {
	o := newOrg(t, "example.org")
	seed := o.member(t, "seed", o.bundle)
	k, der := o.issue(t, "revoked", time.Hour)
	rev, err := o.ca.Revoke(der, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seed.Revoke(rev.Marshal()); err != nil {
		t.Fatal(err)
	}
	n := &node.Node{Key: k, Credential: der, Bundle: o.bundle, Join: []string{invite(t, seed)},
		Endpoints: []netip.AddrPort{netip.AddrPortFrom(loopback, 0)}, TuneGossip: fastGossip, Logger: testLogger(t, "revoked")}
	if err := n.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	var st node.Status
	waitFor(t, 10*time.Second, "the revoked node told", func() bool {
		st, err = n.Status()
		return err == nil && st.Membership.Revoked != nil
	})
	if m := st.Membership; m.Joined || m.Revoked.Serial == "" {
		t.Fatalf("status %+v", m)
	}
	// It has stopped: no more HELLOs after a few join intervals.
	hellos := n.Membership().Stats().Hellos
	time.Sleep(3 * time.Second)
	if now := n.Membership().Stats().Hellos; now != hellos {
		t.Fatalf("still saying HELLO: %d, then %d", hellos, now)
	}
	if refused(seed, membership.ReasonRevoked) == 0 {
		t.Fatal("the seed did not count the revoked HELLO")
	}
}

// A restarted node with a state directory asks the peers it remembers
// back at once, instead of waiting for them to ask it: a seed without a
// join token of its own rejoins.
func TestRestartedSeedRejoins(t *testing.T) {
	o := newOrg(t, "example.org")
	k, der := o.issue(t, "seed", time.Hour)
	dir := t.TempDir()
	start := func() *node.Node {
		n := &node.Node{Key: k, Credential: der, Bundle: o.bundle, Dir: dir,
			Endpoints: []netip.AddrPort{netip.AddrPortFrom(loopback, 0)}, TuneGossip: fastGossip, Logger: testLogger(t, "seed"),
			ReconnectInterval: time.Hour}
		if err := n.Up(context.Background()); err != nil {
			t.Fatal(err)
		}
		return n
	}
	seed := start()
	tok := invite(t, seed)
	a := o.member(t, "a", o.bundle, tok)
	b := o.member(t, "b", o.bundle, tok)
	waitFor(t, 20*time.Second, "mesh", func() bool { return fullMesh([]*node.Node{seed, a, b}) })
	seed.Close() // saves the peers it knows, and says LEAVE
	if _, err := os.Stat(filepath.Join(dir, "known-peers.json")); err != nil {
		t.Fatalf("no known peers saved: %v", err)
	}
	waitFor(t, 10*time.Second, "the seed gone", func() bool { return !admitted(a)[seed.Addr()] && !admitted(b)[seed.Addr()] })
	begin := time.Now()
	seed = start() // a new port: the peers cannot find it, it must find them
	defer seed.Close()
	waitFor(t, 20*time.Second, "the restarted seed back", func() bool { return fullMesh([]*node.Node{seed, a, b}) })
	t.Logf("rejoined in %v", time.Since(begin).Round(time.Millisecond))
	echo(t, seed)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := exchange(ctx, a, seed); err != nil {
		t.Fatalf("%v\n%s", err, pairState(a, seed))
	}
}
