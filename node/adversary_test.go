package node_test

// The adversarial suite: the attacks of docs/threat-model.md, made as an
// admitted insider, a process on an agent's host and an on-path attacker
// would make them, with the project's own packages. Each checks that the
// attack is refused and counted under its reason, and that nothing else
// changed: WhoIs answers, admissions, endpoints, tasks, and the victims
// still talk to everyone.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/membership"
)

// trio is an admitted insider a, a victim v and a bystander c, all
// admitted by each other and serving TCP echo.
type trio struct {
	o       *org
	a, v, c *node.Node
}

func newTrio(t *testing.T) trio {
	t.Helper()
	o := newOrg(t, "example.org")
	v := o.member(t, "v", o.bundle)
	a := o.member(t, "a", o.bundle, invite(t, v))
	c := o.member(t, "c", o.bundle, invite(t, v))
	all := []*node.Node{a, v, c}
	waitFor(t, 20*time.Second, "mesh", func() bool { return fullMesh(all) })
	for _, n := range all {
		echo(t, n)
	}
	return trio{o: o, a: a, v: v, c: c}
}

// snapshot is what an attack must not change at a node, for each of the
// nodes of interest: who it says holds its address, whether it is
// admitted, and where it is reached.
type snapshot map[string]string

func snap(t *testing.T, at *node.Node, of ...*node.Node) snapshot {
	t.Helper()
	s := snapshot{}
	adm := admitted(at)
	for _, n := range of {
		w, err := at.WhoIs(n.Addr())
		if err != nil {
			t.Fatalf("whois %s at %s: %v", n.Addr(), at.Addr(), err)
		}
		line := fmt.Sprintf("%s task=%v self=%v admitted=%v", w.ID, w.Task != nil, w.Self, adm[n.Addr()])
		if m, ok := at.Membership().Lookup(n.Addr()); ok {
			line += " endpoint=" + m.Endpoint.String()
		}
		s[n.Addr().String()] = line
	}
	return s
}

func (s snapshot) same(t *testing.T, what string, after snapshot) {
	t.Helper()
	for a, before := range s {
		if after[a] != before {
			t.Errorf("%s changed what %s is:\nbefore %s\nafter  %s", what, a, before, after[a])
		}
	}
}

// talks checks that every pair of nodes still exchanges data.
func talks(t *testing.T, nodes ...*node.Node) {
	t.Helper()
	for _, x := range nodes {
		for _, y := range nodes {
			if x == y {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := exchange(ctx, x, y)
			cancel()
			if err != nil {
				t.Fatalf("%s -> %s after the attack: %v\n%s", x.Addr(), y.Addr(), err, pairState(x, y))
			}
		}
	}
}

// refusedBy waits until n has counted more refusals for r than before.
func refusedBy(t *testing.T, n *node.Node, r membership.Reason, before uint64, what string) {
	t.Helper()
	waitFor(t, 5*time.Second, what+" refused as "+string(r), func() bool { return refused(n, r) > before })
}

// sendPeerFrame sends frame to to's task port from port 9999 of from's
// overlay address: a process on from's host, which can bind its address.
func sendPeerFrame(t *testing.T, from, to *node.Node, frame []byte) {
	t.Helper()
	pc, err := from.ListenPacket("udp", ":9999")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.WriteTo(frame, net.UDPAddrFromAddrPort(netip.AddrPortFrom(to.Addr(), membership.TaskPort))); err != nil {
		t.Fatal(err)
	}
}

func delegateFrame(t *testing.T, from identity.PrivateKey, to netip.Addr, links ...identity.Link) []byte {
	t.Helper()
	var raw [][]byte
	for _, l := range links {
		raw = append(raw, l.Marshal())
	}
	f, err := membership.PeerFrame(from, "delegate", to, time.Now(), membership.DelegateBody(raw))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// An insider's delegation cannot claim an address that is not its task's:
// not without the child's acceptance, not this node's own, not another
// agent's even with that agent's key, and a task claim on the address of
// an agent that joins later gives way to the agent.
func TestAttackDelegationClaims(t *testing.T) {
	tr := newTrio(t)
	a, v, c := tr.a, tr.v, tr.c
	exp := time.Now().Add(30 * time.Minute)
	before := map[*node.Node]snapshot{v: snap(t, v, a, v, c), c: snap(t, c, a, v, c)}
	claim := func(child identity.PublicKey) identity.Delegation {
		return identity.Delegation{Child: child, Parent: a.AgentKey(), Owner: a.AgentKey(), Depth: 1, NotAfter: exp}
	}

	// Not accepted by its child: a names v's key, and signs the
	// acceptance itself, as it cannot sign as v.
	rec, err := identity.SignDelegation(a.Key, claim(v.AgentKey()))
	if err != nil {
		t.Fatal(err)
	}
	fakeAcc, _ := identity.Accept(a.Key, rec)
	for _, target := range []*node.Node{c, v} {
		n := refused(target, membership.ReasonBadDelegation)
		sendPeerFrame(t, a, target, delegateFrame(t, a.Key, target.Addr(), identity.Link{Record: rec, Acceptance: fakeAcc}))
		refusedBy(t, target, membership.ReasonBadDelegation, n, "delegation accepted by the wrong key")
	}

	// With v's key (stolen): proof of possession holds, the identity
	// table does not: v is an agent at c, and v's own address at v.
	link, err := identity.Delegate(a.Key, v.Key, claim(v.AgentKey()))
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []*node.Node{c, v} {
		n := refused(target, membership.ReasonAddrConflict)
		sendPeerFrame(t, a, target, delegateFrame(t, a.Key, target.Addr(), link))
		refusedBy(t, target, membership.ReasonAddrConflict, n, "a task at an agent's address")
	}

	// An agent that joins later: a holds its key and claims its address
	// as a task first (c accepts: nobody holds it yet); when the agent
	// is admitted, it takes its address back.
	lateKey, lateCred := tr.o.issue(t, "late", time.Hour)
	lateAddr, _ := lateKey.Public().Addr()
	link, err = identity.Delegate(a.Key, lateKey, claim(lateKey.Public()))
	if err != nil {
		t.Fatal(err)
	}
	sendPeerFrame(t, a, c, delegateFrame(t, a.Key, c.Addr(), link))
	waitFor(t, 5*time.Second, "the claim accepted at c", func() bool {
		w, err := c.WhoIs(lateAddr)
		return err == nil && w.Task != nil
	})
	displaced := refused(c, membership.ReasonTaskDisplaced)
	late := &node.Node{Key: lateKey, Credential: lateCred, Bundle: tr.o.bundle, Join: []string{invite(t, v)},
		Endpoints: []netip.AddrPort{netip.AddrPortFrom(loopback, 0)}, TuneGossip: fastGossip, Logger: testLogger(t, "late")}
	if err := late.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	waitFor(t, 20*time.Second, "the late agent admitted everywhere", func() bool { return fullMesh([]*node.Node{a, v, c, late}) })
	refusedBy(t, c, membership.ReasonTaskDisplaced, displaced, "the claim")
	if w, err := c.WhoIs(lateAddr); err != nil || w.Task != nil || w.ID != "spiffe://example.org/agent/late" {
		t.Fatalf("c.WhoIs(late) = %+v, %v; want the agent", w, err)
	}
	echo(t, late)
	talks(t, a, v, c, late)
	snap(t, v, a, v, c).same(t, "the delegations", before[v])
	snap(t, c, a, v, c).same(t, "the delegations", before[c])
}

// A sub-agent may not reach beyond its parent, and a chain that tries is
// refused whole.
func TestAttackChildWiderThanParent(t *testing.T) {
	tr := newTrio(t)
	a, c := tr.a, tr.c
	t1, _ := identity.GeneratePrivateKey()
	t2, _ := identity.GeneratePrivateKey()
	parent := identity.Delegation{Child: t1.Public(), Parent: a.AgentKey(), Owner: a.AgentKey(), Depth: 1,
		NotAfter: time.Now().Add(time.Minute), Scope: []string{"group:tools"}, Budget: identity.Budget{Rate: 5}}
	l1, err := identity.Delegate(a.Key, t1, parent)
	if err != nil {
		t.Fatal(err)
	}
	t2Addr, _ := t2.Public().Addr()
	for name, child := range map[string]identity.Delegation{
		"outlives":    {NotAfter: time.Now().Add(time.Hour), Scope: parent.Scope, Budget: parent.Budget},
		"wider scope": {NotAfter: parent.NotAfter, Scope: []string{"group:tools", "group:db"}, Budget: parent.Budget},
		"faster":      {NotAfter: parent.NotAfter, Scope: parent.Scope, Budget: identity.Budget{Rate: 50}},
	} {
		child.Child, child.Parent, child.Owner, child.Depth = t2.Public(), t1.Public(), a.AgentKey(), 2
		l2, err := identity.Delegate(t1, t2, child)
		if err != nil {
			t.Fatal(err)
		}
		n := refused(c, membership.ReasonBadDelegation)
		sendPeerFrame(t, a, c, delegateFrame(t, a.Key, c.Addr(), l1, l2))
		refusedBy(t, c, membership.ReasonBadDelegation, n, name)
		if _, err := c.WhoIs(t2Addr); !errors.Is(err, node.ErrUnknownAddr) {
			t.Fatalf("%s: the sub-agent is known at c: %v", name, err)
		}
	}
	// A task that would outlive its agent's credential is refused too.
	long := identity.Delegation{Child: t1.Public(), Parent: a.AgentKey(), Owner: a.AgentKey(), Depth: 1, NotAfter: time.Now().Add(48 * time.Hour)}
	l, err := identity.Delegate(a.Key, t1, long)
	if err != nil {
		t.Fatal(err)
	}
	n := refused(c, membership.ReasonBadDelegation)
	sendPeerFrame(t, a, c, delegateFrame(t, a.Key, c.Addr(), l))
	refusedBy(t, c, membership.ReasonBadDelegation, n, "a task outliving its agent")
}

// udpRelay forwards datagrams between one client and a server, keeping a
// copy of each: an on-path attacker. Close stops it.
type udpRelay struct {
	pc     *net.UDPConn
	server netip.AddrPort

	mu       sync.Mutex
	client   netip.AddrPort
	toServer [][]byte
	toClient [][]byte
}

func newUDPRelay(t *testing.T, server netip.AddrPort) *udpRelay {
	t.Helper()
	pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback, 0)))
	if err != nil {
		t.Fatal(err)
	}
	r := &udpRelay{pc: pc, server: server}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			b := append([]byte(nil), buf[:n]...)
			r.mu.Lock()
			to := r.server
			if from == r.server {
				to = r.client
				r.toClient = append(r.toClient, b)
			} else {
				r.client = from
				r.toServer = append(r.toServer, b)
			}
			r.mu.Unlock()
			pc.WriteToUDPAddrPort(b, to)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return r
}

func (r *udpRelay) addr() netip.AddrPort { return r.pc.LocalAddr().(*net.UDPAddr).AddrPort() }

// first returns the first captured datagram whose type (third byte) is
// typ in the given direction.
func (r *udpRelay) first(toServer bool, typ byte) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	dgs := r.toClient
	if toServer {
		dgs = r.toServer
	}
	for _, d := range dgs {
		if len(d) > 3 && d[0] == 0xa6 && d[2] == typ {
			return d
		}
	}
	return nil
}

// sendFrom sends frame to n's UDP port from a fresh loopback socket: a
// stranger elsewhere on the network.
func sendFrom(t *testing.T, n *node.Node, frame []byte) netip.AddrPort {
	t.Helper()
	port, _ := n.UDPPort()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WriteToUDPAddrPort(frame, netip.AddrPortFrom(loopback, port)); err != nil {
		t.Fatal(err)
	}
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// An on-path attacker who saw an agent's HELLO and the ACK to it cannot
// replay either from elsewhere: neither moves an endpoint or admits
// anyone; and an ACK that answers no HELLO is refused.
func TestAttackReplayedAdmission(t *testing.T) {
	o := newOrg(t, "example.org")
	seed := o.member(t, "seed", o.bundle)
	c := o.member(t, "c", o.bundle, invite(t, seed))
	waitFor(t, 20*time.Second, "pair", func() bool { return fullMesh([]*node.Node{seed, c}) })
	// v joins through a relay that keeps what it forwards.
	seedPort, _ := seed.UDPPort()
	relay := newUDPRelay(t, netip.AddrPortFrom(loopback, seedPort))
	tok := membership.Token{Key: seed.PublicKey(), Endpoint: relay.addr()}.String()
	v := o.member(t, "v", o.bundle, tok)
	all := []*node.Node{seed, c, v}
	waitFor(t, 20*time.Second, "mesh", func() bool { return fullMesh(all) })
	for _, n := range all {
		echo(t, n)
	}
	hello, ack := relay.first(true, 1), relay.first(false, 2)
	if hello == nil || ack == nil {
		t.Fatal("the relay saw no HELLO or no ACK")
	}
	before := map[*node.Node]snapshot{seed: snap(t, seed, seed, c, v), c: snap(t, c, seed, c, v), v: snap(t, v, seed, c, v)}

	// The HELLO, replayed to the node that took it and to another.
	for _, target := range []*node.Node{seed, c} {
		n := refused(target, membership.ReasonReplay)
		sendFrom(t, target, hello)
		refusedBy(t, target, membership.ReasonReplay, n, "a replayed HELLO")
	}
	// The ACK, replayed to the node it answered and to another: neither
	// has a HELLO outstanding to this source.
	for _, target := range []*node.Node{v, c} {
		n := refused(target, membership.ReasonUnknownResponse)
		sendFrom(t, target, ack)
		refusedBy(t, target, membership.ReasonUnknownResponse, n, "a replayed ACK")
	}
	// An ACK made up by a valid agent, answering nothing.
	k, der := o.issue(t, "x", time.Hour)
	rec, err := membership.SignAgentRecord(k, 1, der, []netip.AddrPort{netip.AddrPortFrom(loopback, 1)}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	h, _ := membership.HelloFrame(k, rec, time.Now())
	madeUp, err := membership.AckFrame(k, rec, h, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	n := refused(c, membership.ReasonUnknownResponse)
	sendFrom(t, c, madeUp)
	refusedBy(t, c, membership.ReasonUnknownResponse, n, "an unsolicited ACK")
	kAddr, _ := k.Public().Addr()
	if m, ok := c.Membership().Lookup(kAddr); ok {
		t.Fatalf("the unsolicited ACK's sender is known: %+v", m)
	}
	for n, s := range before {
		snap(t, n, seed, c, v).same(t, "the replays", s)
	}
	talks(t, all...)
}

// A process on an agent's host binds the agent's address (it can, in
// sidecar mode) and sends LEAVE and END frames to its peers: unsigned,
// signed with its own key, or replayed; none is taken.
func TestAttackLocalProcessFrames(t *testing.T) {
	tr := newTrio(t)
	a, v, c := tr.a, tr.v, tr.c
	task, err := a.StartTask(context.Background(), node.TaskSpec{Class: "x"})
	if err != nil {
		t.Fatal(err)
	}
	// The task talks to c, so c holds its delegation.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tc, err := task.Dial(ctx, "tcp", netip.AddrPortFrom(c.Addr(), 7).String())
	if err != nil {
		t.Fatalf("%v; c refused %v", err, c.Membership().Stats().Refused)
	}
	tc.Close()
	waitFor(t, 5*time.Second, "c knows the task", func() bool { w, err := c.WhoIs(task.Addr()); return err == nil && w.Task != nil })
	before := snap(t, c, a, v, c)

	stranger, _ := identity.GeneratePrivateKey()
	unsigned := []byte{0xa6, 1, 6}
	forgedLeave, _ := membership.PeerFrame(stranger, "leave", c.Addr(), time.Now(), nil)
	forgedEnd, _ := membership.PeerFrame(stranger, "end", c.Addr(), time.Now(), task.Addr().AsSlice())
	for _, tc := range []struct {
		what   string
		frame  []byte
		reason membership.Reason
	}{
		{"an unsigned LEAVE", unsigned, membership.ReasonMalformed},
		{"a LEAVE signed by another key", forgedLeave, membership.ReasonBadSignature},
		{"an END signed by another key", forgedEnd, membership.ReasonBadSignature},
		{"an oversized frame", make([]byte, 60000), membership.ReasonMalformed},
	} {
		n := refused(c, tc.reason)
		sendPeerFrame(t, a, c, tc.frame)
		refusedBy(t, c, tc.reason, n, tc.what)
	}
	// A genuine END (signed by a, for a task of a's) replayed: the first
	// takes the task away, the copy is refused, and after the task is
	// delivered again (its next packet) the replay still changes nothing.
	end, err := membership.PeerFrame(a.Key, "end", c.Addr(), time.Now(), task.Addr().AsSlice())
	if err != nil {
		t.Fatal(err)
	}
	sendPeerFrame(t, a, c, end)
	waitFor(t, 5*time.Second, "the genuine END taken", func() bool { _, err := c.WhoIs(task.Addr()); return err != nil })
	n := refused(c, membership.ReasonReplay)
	sendPeerFrame(t, a, c, end)
	refusedBy(t, c, membership.ReasonReplay, n, "a replayed END")

	snap(t, c, a, v, c).same(t, "the frames", before)
	talks(t, a, v, c)
}

// A source that floods a joining cluster with admission frames is
// refused before any signature check once over its rate; the cluster
// still converges, and nothing a legitimate peer sent is dropped.
func TestAttackFloodDuringJoin(t *testing.T) {
	if testing.Short() {
		t.Skip("10-node cluster under a flood in -short mode")
	}
	o := newOrg(t, "example.org")
	seed := o.member(t, "seed", o.bundle)
	tok := invite(t, seed)
	// The flood: a validly signed HELLO from an agent whose credential
	// this cluster does not trust (refused, but only after a signature
	// check, were it not rate-limited), 10 000 a second from one socket to
	// the seed, and garbage to everyone.
	rogue := newOrg(t, "evil.example")
	k, der := rogue.issue(t, "mallory", time.Hour)
	rec, err := membership.SignAgentRecord(k, 1, der, []netip.AddrPort{netip.AddrPortFrom(loopback, 1)}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sock, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	hello, err := membership.HelloFrame(k, rec, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	garbage := []byte{0xa6, 2, 1, 0, 0, 0}
	var nodes []*node.Node
	var mu sync.Mutex
	stop := make(chan struct{})
	flooded := make(chan int)
	go func() {
		sent := 0
		defer func() { flooded <- sent }()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		began := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			mu.Lock()
			targets := append([]*node.Node{seed}, nodes...)
			mu.Unlock()
			// Catch up to 10 000 a second since the start, at most 1 000
			// a tick: the HELLO to the seed, garbage to all.
			for due := min(int(time.Since(began).Seconds()*10000), sent+1000); sent < due; sent++ {
				frame, dst := hello, seed
				if sent%2 == 1 {
					frame, dst = garbage, targets[sent%len(targets)]
				}
				port, _ := dst.UDPPort()
				sock.WriteToUDPAddrPort(frame, netip.AddrPortFrom(loopback, port))
			}
		}
	}()
	// Let the flood run on its own a while, then join under it.
	floodStart := time.Now()
	time.Sleep(time.Second)
	var wg sync.WaitGroup
	for i := range 9 {
		wg.Go(func() {
			n := o.member(t, fmt.Sprintf("agent-%d", i), o.bundle, tok)
			mu.Lock()
			nodes = append(nodes, n)
			mu.Unlock()
		})
	}
	wg.Wait()
	all := append([]*node.Node{seed}, nodes...)
	start := time.Now()
	waitFor(t, 60*time.Second, "10-node mesh under the flood", func() bool { return fullMesh(all) })
	t.Logf("converged %v after the last Up, under the flood", time.Since(start).Round(time.Millisecond))
	close(stop)
	sent := <-flooded
	t.Logf("flood: %d frames sent in %v", sent, time.Since(floodStart).Round(time.Millisecond))
	limited := refused(seed, membership.ReasonRateLimited)
	if limited == 0 {
		t.Fatal("the seed rate-limited none of the flood")
	}
	for _, n := range all {
		if d := refused(n, membership.ReasonOverload); d != 0 {
			t.Errorf("%s dropped %d events or frames to overload", n.Addr(), d)
		}
	}
	t.Logf("seed: %d rate-limited, %d untrusted (a signature checked for the first only), %d malformed", limited, refused(seed, membership.ReasonUntrusted), refused(seed, membership.ReasonMalformed))
}
