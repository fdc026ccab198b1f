package node_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/membership"
)

// whoServer answers each TCP connection on port 80 with the WhoIs of its
// caller, as the callee of a tool call would ask.
func whoServer(t *testing.T, n *node.Node) chan node.WhoIsResult {
	ln, err := n.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan node.WhoIsResult, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ra := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
			who, err := n.WhoIs(ra)
			if err != nil {
				fmt.Fprintf(c, "error %v", err)
			} else {
				fmt.Fprintf(c, "hello %s", who.Addr)
				seen <- who
			}
			c.Close()
		}
	}()
	return seen
}

func call(ctx context.Context, dial func(context.Context, string, string) (net.Conn, error), to netip.Addr) (string, error) {
	c, err := dial(ctx, "tcp", netip.AddrPortFrom(to, 80).String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// A task on one node calls a peer that never saw it: the first packet is
// held until the peer holds the delegation, then flows, and the callee's
// WhoIs names agent and task. A sub-agent works the same, one level down.
func TestTaskAcrossNodes(t *testing.T) {
	o := newOrg(t, "example.org")
	planner := o.member(t, "planner", o.bundle)
	tool := o.member(t, "tool", o.bundle, invite(t, planner))
	waitFor(t, 20*time.Second, "pair", func() bool { return fullMesh([]*node.Node{planner, tool}) })
	seen := whoServer(t, tool)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	task, err := planner.StartTask(ctx, node.TaskSpec{ID: "order-42", Class: "tool-call", Sensitivity: "low", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if task.Addr() == planner.Addr() || !identity.IsOverlay(task.Addr()) {
		t.Fatalf("task address %s", task.Addr())
	}
	reply, err := call(ctx, task.Dial, tool.Addr())
	if err != nil || reply != "hello "+task.Addr().String() {
		t.Fatalf("call from task: %q, %v", reply, err)
	}
	// The first packet (the SYN) was held, then released: none dropped.
	if st, _ := planner.Status(); st.Filter.Held == 0 || st.Filter.Drops["task_undelivered"] != 0 {
		t.Fatalf("filter held %d, undelivered %d", st.Filter.Held, st.Filter.Drops["task_undelivered"])
	}
	who := <-seen
	if who.Task == nil || who.Task.Class != "tool-call" || who.Task.Owner != planner.Addr() || who.ID != "spiffe://example.org/agent/planner" ||
		who.Task.Pseudonym != task.Pseudonym() || who.Task.Pseudonym == "order-42" || who.Task.Depth != 1 {
		t.Fatalf("callee WhoIs(task) = %+v task %+v", who, who.Task)
	}
	// With tasks alive, the agent's own connections still leave from the
	// agent's address (the stack must not pick a task address).
	for range 5 {
		extra, err := planner.StartTask(ctx, node.TaskSpec{})
		if err != nil {
			t.Fatal(err)
		}
		defer extra.End()
	}
	if reply, err := call(ctx, planner.Dial, tool.Addr()); err != nil || reply != "hello "+planner.Addr().String() {
		t.Fatalf("agent call while tasks exist: %q, %v", reply, err)
	}
	<-seen
	// The caller side can ask too.
	if w, err := planner.WhoIs(task.Addr()); err != nil || w.Task == nil || !w.Self {
		t.Fatalf("caller WhoIs(task) = %+v, %v", w, err)
	}

	// A sub-agent of the task: depth 2, parent chain planner → task.
	sub, err := planner.StartTask(ctx, node.TaskSpec{Class: "retrieval", Parent: task})
	if err != nil {
		t.Fatal(err)
	}
	if reply, err := call(ctx, sub.Dial, tool.Addr()); err != nil || reply != "hello "+sub.Addr().String() {
		t.Fatalf("call from sub-agent: %q, %v", reply, err)
	}
	who = <-seen
	if who.Task == nil || who.Task.Depth != 2 || len(who.Task.Parents) != 2 || who.Task.Parents[0] != planner.Addr() || who.Task.Parents[1] != task.Addr() {
		t.Fatalf("sub-agent WhoIs = %+v", who.Task)
	}
	if sub.Expires().After(task.Expires()) {
		t.Fatal("sub-agent outlives its parent")
	}
	// The task serves too, on its own address: the tool, which holds its
	// delegation, connects to it and its WhoIs names the tool.
	tln, err := task.Listen("tcp", ":81")
	if err != nil {
		t.Fatalf("task listen: %v", err)
	}
	defer tln.Close()
	go func() {
		if c, err := tln.Accept(); err == nil {
			fmt.Fprint(c, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr())
			c.Close()
		}
	}()
	tc, err := tool.Dial(ctx, "tcp", netip.AddrPortFrom(task.Addr(), 81).String())
	if err != nil {
		t.Fatalf("dial a task's listener: %v", err)
	}
	b, _ := io.ReadAll(tc)
	tc.Close()
	if string(b) != tool.Addr().String() {
		t.Fatalf("the task's listener saw %q, want %s", b, tool.Addr())
	}

	// Ending the task removes it at the peer.
	task.End()
	waitFor(t, 10*time.Second, "task withdrawn at the peer", func() bool {
		_, err := tool.WhoIs(task.Addr())
		return errors.Is(err, node.ErrUnknownAddr)
	})
	if _, err := task.Dial(ctx, "tcp", netip.AddrPortFrom(tool.Addr(), 80).String()); !errors.Is(err, node.ErrTaskEnded) {
		t.Fatalf("dial from an ended task: %v", err)
	}
}

func TestTaskDepthLimit(t *testing.T) {
	o := newOrg(t, "example.org")
	n := o.member(t, "deep", o.bundle)
	ctx := context.Background()
	parent, err := n.StartTask(ctx, node.TaskSpec{})
	if err != nil {
		t.Fatal(err)
	}
	for range identity.MaxDelegationDepth - 1 {
		if parent, err = n.StartTask(ctx, node.TaskSpec{Parent: parent}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.StartTask(ctx, node.TaskSpec{Parent: parent}); !errors.Is(err, node.ErrTaskDepth) {
		t.Fatalf("depth %d: err = %v, want ErrTaskDepth", identity.MaxDelegationDepth+1, err)
	}
}

func TestTaskExpiry(t *testing.T) {
	o := newOrg(t, "example.org")
	a := o.member(t, "a", o.bundle)
	b := o.member(t, "b", o.bundle, invite(t, a))
	waitFor(t, 20*time.Second, "pair", func() bool { return fullMesh([]*node.Node{a, b}) })
	whoServer(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	task, err := a.StartTask(ctx, node.TaskSpec{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := call(ctx, task.Dial, b.Addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "task expired everywhere", func() bool {
		_, errB := b.WhoIs(task.Addr())
		return task.Ended() && errors.Is(errB, node.ErrUnknownAddr)
	})
}

// A delegation that is forged, or that does not descend from the sender,
// is refused and counted; the peer keeps working.
func TestForgedDelegationRefused(t *testing.T) {
	o := newOrg(t, "example.org")
	a := o.member(t, "a", o.bundle)
	b := o.member(t, "b", o.bundle, invite(t, a))
	waitFor(t, 20*time.Second, "pair", func() bool { return fullMesh([]*node.Node{a, b}) })
	// a sends, from its own overlay address, a delegation signed by a key
	// that is not a's: "delegating" someone else's authority.
	stranger, _ := identity.GeneratePrivateKey()
	child, _ := identity.GeneratePrivateKey()
	link, err := identity.Delegate(stranger, child, identity.Delegation{Child: child.Public(), Parent: stranger.Public(), Owner: stranger.Public(), Depth: 1, NotAfter: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := a.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.Addr(), membership.TaskPort))
	before := b.Membership().Stats().Refused[membership.ReasonBadDelegation]
	waitFor(t, 10*time.Second, "forged delegation refused", func() bool {
		frame, err := membership.PeerFrame(a.Key, "delegate", b.Addr(), time.Now(), membership.DelegateBody([][]byte{link.Marshal()}))
		if err != nil {
			t.Fatal(err)
		}
		pc.WriteTo(frame, to)
		time.Sleep(100 * time.Millisecond)
		return b.Membership().Stats().Refused[membership.ReasonBadDelegation] > before
	})
	childAddr, _ := child.Public().Addr()
	if _, err := b.WhoIs(childAddr); !errors.Is(err, node.ErrUnknownAddr) {
		t.Fatalf("forged task known at b: %v", err)
	}
}

func TestTaskIDUnique(t *testing.T) {
	o := newOrg(t, "example.org")
	n := o.member(t, "a", o.bundle)
	ctx := context.Background()
	first, err := n.StartTask(ctx, node.TaskSpec{ID: "job-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.StartTask(ctx, node.TaskSpec{ID: "job-1"}); !errors.Is(err, node.ErrTaskExists) {
		t.Fatalf("same ID twice: %v, want ErrTaskExists", err)
	}
	first.End()
	if _, err := n.StartTask(ctx, node.TaskSpec{ID: "job-1"}); err != nil {
		t.Fatalf("ID reused after End: %v", err)
	}
}

// A task whose TTL is over before StartTask returns ends cleanly: the
// expiry timer fires End at once (it used to fire before t.timer was set,
// a nil dereference that crashed the sidecar, and to end a task not yet
// registered, which then stayed registered). Run under -race.
func TestTaskTinyTTL(t *testing.T) {
	o := newOrg(t, "example.org")
	n := o.member(t, "a", o.bundle)
	ctx := context.Background()
	for i := range 200 {
		task, err := n.StartTask(ctx, node.TaskSpec{TTL: time.Nanosecond})
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		if i%2 == 0 {
			task.End() // racing the timer
		}
	}
	waitFor(t, 10*time.Second, "every task ended", func() bool { return len(n.Tasks()) == 0 })
}

// A task cannot outlive the node's credential, nor a sub-agent its
// parent: a longer TTL is refused with both times in the error, and the
// default TTL is cut to the bound.
func TestTaskTTLBound(t *testing.T) {
	o := newOrg(t, "example.org")
	n := o.member(t, "a", o.bundle) // its credential lasts an hour
	ctx := context.Background()
	credEnd := n.Membership().Credential().NotAfter
	_, err := n.StartTask(ctx, node.TaskSpec{TTL: 1000000 * time.Hour})
	if !errors.Is(err, node.ErrTaskTTL) || !strings.Contains(err.Error(), credEnd.UTC().Format(time.RFC3339)) || !strings.Contains(err.Error(), "credential") {
		t.Fatalf("TTL past the credential: %v, want ErrTaskTTL naming the credential's end %s", err, credEnd.UTC().Format(time.RFC3339))
	}
	task, err := n.StartTask(ctx, node.TaskSpec{}) // default: an hour, cut to the credential
	if err != nil {
		t.Fatal(err)
	}
	if task.Expires().After(credEnd) {
		t.Fatalf("default task ends %s, after its credential %s", task.Expires(), credEnd)
	}
	parent, err := n.StartTask(ctx, node.TaskSpec{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	_, err = n.StartTask(ctx, node.TaskSpec{TTL: 2 * time.Minute, Parent: parent})
	if !errors.Is(err, node.ErrTaskTTL) || !strings.Contains(err.Error(), "parent") || !strings.Contains(err.Error(), parent.Expires().UTC().Format(time.RFC3339)) {
		t.Fatalf("sub-agent TTL past its parent: %v, want ErrTaskTTL naming the parent's end", err)
	}
	sub, err := n.StartTask(ctx, node.TaskSpec{TTL: 30 * time.Second, Parent: parent})
	if err != nil || sub.Expires().After(parent.Expires()) {
		t.Fatalf("sub-agent within its parent: %v, expires %v (parent %v)", err, sub.Expires(), parent.Expires())
	}
}

// deliveryErrs is a slog.Handler that keeps the errors of the node's
// "delegation not delivered" records.
type deliveryErrs struct {
	mu   sync.Mutex
	errs []error
}

func (h *deliveryErrs) Enabled(context.Context, slog.Level) bool { return true }
func (h *deliveryErrs) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *deliveryErrs) WithGroup(string) slog.Handler            { return h }
func (h *deliveryErrs) Handle(_ context.Context, r slog.Record) error {
	if !strings.Contains(r.Message, "not delivered") {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if err, ok := a.Value.Any().(error); ok && a.Key == "err" {
			h.mu.Lock()
			h.errs = append(h.errs, err)
			h.mu.Unlock()
		}
		return true
	})
	return nil
}

// Close ends a task delivery in flight at once (it waited for the
// delivery's 5 s timeout: Up lost the cancel of the context deliveries run
// under), and leaves no goroutine behind.
func TestCloseDuringDelivery(t *testing.T) {
	defer verifyNoLeaks(t, goleak.IgnoreCurrent())
	o := newOrg(t, "example.org")
	logs := &deliveryErrs{}
	k, der := o.issue(t, "a", time.Hour)
	a := &node.Node{Key: k, Credential: der, Bundle: o.bundle, DisableDNS: true, Logger: slog.New(logs),
		Endpoints: []netip.AddrPort{netip.AddrPortFrom(loopback, 0)}, TuneGossip: fastGossip}
	if err := a.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A ghost: an agent admitted through a HELLO from a socket that then
	// goes silent, so a delegation sent to it is never acknowledged.
	gk, gder := o.issue(t, "ghost", time.Hour)
	rec, err := membership.SignAgentRecord(gk, 1, gder, []netip.AddrPort{netip.AddrPortFrom(loopback, 1)}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	hello, err := membership.HelloFrame(gk, rec, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sendHello(t, a, hello)
	ghost, _ := gk.Public().Addr()
	waitFor(t, 5*time.Second, "ghost admitted", func() bool {
		m, ok := a.Membership().Lookup(ghost)
		return ok && m.State == "alive"
	})
	task, err := a.StartTask(context.Background(), node.TaskSpec{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	before, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	dialed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := task.Dial(ctx, "tcp", netip.AddrPortFrom(ghost, 80).String())
		if err == nil {
			c.Close()
		}
		dialed <- err
	}()
	// The task's first packet is held, and the delivery has begun: its
	// first frame to the ghost has left (the only packet a lone node
	// sends into the tunnel).
	waitFor(t, 5*time.Second, "the task's first packet held and its delegation sent", func() bool {
		st, err := a.Status()
		return err == nil && st.Filter.Held > 0 && st.Filter.OutPackets > before.Filter.OutPackets
	})
	start := time.Now()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Close took %v", time.Since(start))
	<-dialed
	logs.mu.Lock()
	defer logs.mu.Unlock()
	if len(logs.errs) != 1 || !errors.Is(logs.errs[0], context.Canceled) {
		t.Fatalf("delivery ended with %v, want one ended by Close (context.Canceled), not by its timeout", logs.errs)
	}
}

// With membership, a dial (the agent's or a task's) to an overlay address
// no agent holds fails at once, saying membership has not heard of it.
func TestDialUnknownWithMembership(t *testing.T) {
	o := newOrg(t, "example.org")
	a := o.member(t, "a", o.bundle)
	b := o.member(t, "b", o.bundle, invite(t, a))
	waitFor(t, 20*time.Second, "pair", func() bool { return fullMesh([]*node.Node{a, b}) })
	echo(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	task, err := a.StartTask(ctx, node.TaskSpec{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	nobody := netip.AddrPortFrom(netip.MustParseAddr("2001:21::dead"), 7).String()
	for name, dial := range map[string]func(context.Context, string, string) (net.Conn, error){"agent": a.Dial, "task": task.Dial} {
		_, err := dial(ctx, "tcp", nobody)
		if !errors.Is(err, node.ErrUnknownAddr) || !strings.Contains(err.Error(), "membership has not heard of it") {
			t.Errorf("%s dials an address nobody holds: %v, want ErrUnknownAddr", name, err)
		}
	}
	// Known addresses still work: a peer, and this node's own task.
	if err := exchange(ctx, a, b); err != nil {
		t.Fatal(err)
	}
	c, err := task.Dial(ctx, "tcp", netip.AddrPortFrom(b.Addr(), 7).String())
	if err != nil {
		t.Fatalf("task dials a peer: %v", err)
	}
	c.Close()
}
