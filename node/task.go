package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node/membership"
	"github.com/agent6/agent6/overlay"
)

// TaskSpec describes a task (or sub-agent) to start.
type TaskSpec struct {
	// ID is the caller's name for the task. It never leaves this node:
	// peers see only its pseudonym, an HMAC of it under a secret derived
	// from the agent key. Empty means a random one.
	ID          string
	Class       string   // e.g. "tool-call", "retrieval"
	Sensitivity string   // e.g. "low", "pii"
	Scope       []string // what the task may reach (enforced by policy)
	Budget      identity.Budget
	// TTL is how long the task lives; 0 means one hour, cut to what the
	// bounds allow. A task cannot outlive the node's credential, nor a
	// sub-agent its parent: a longer TTL is refused (ErrTaskTTL).
	TTL time.Duration
	// Parent, if set, makes this a sub-agent of that task, one level
	// deeper (at most identity.MaxDelegationDepth). A sub-agent's scope
	// and budget must lie within its parent's, and it belongs to its
	// parent's trace.
	Parent *Task
	// TraceID names the work the task belongs to across agents and trust
	// domains (W3C trace context's trace-id). Zero means a random one; a
	// sub-agent inherits its parent's.
	TraceID identity.TraceID
}

// Task is a delegated identity: its own key and address, signed for by the
// agent (or a parent task). Its traffic rides the agent's WireGuard
// sessions with the task address as source, so every peer can tell agent
// and task apart — and ask WhoIs.
type Task struct {
	n      *Node
	key    identity.PrivateKey
	addr   netip.Addr
	info   identity.Delegation
	chain  [][]byte // delegation links (identity.Link encodings), root first
	parent *Task

	mu        sync.Mutex // guards delivered, ended, live, timer
	delivered map[netip.Addr]bool
	ended     bool
	live      bool        // its address is on the node
	timer     *time.Timer // the expiry; nil until the task is live
}

// Errors for tasks.
var (
	ErrTaskDepth = fmt.Errorf("node: sub-agents nest at most %d deep", identity.MaxDelegationDepth)
	// ErrTaskWider reports a sub-agent asked to reach or spend beyond its
	// parent.
	ErrTaskWider  = errors.New("node: a sub-agent must lie within its parent's scope, budget and life")
	ErrTaskEnded  = errors.New("node: task ended")
	ErrTaskExists = errors.New("node: a task with this ID is already running")
	// ErrTaskTTL reports a TTL that would outlive the node's credential or
	// the parent task.
	ErrTaskTTL = errors.New("node: a task cannot outlive the node's credential or its parent task")
)

// StartTask mints a key for a task, signs its delegation and gives the
// node its address. The first packet from the task to each peer is held
// until that peer holds the delegation (delivered directly, one round
// trip), then flows. A task lives at most as long as the node's credential
// and a sub-agent at most as long as its parent: the default TTL is cut
// to that, and a longer TTL asked for is refused with ErrTaskTTL.
func (n *Node) StartTask(ctx context.Context, spec TaskSpec) (*Task, error) {
	if _, err := n.running(); err != nil {
		return nil, fmt.Errorf("node: start task: %w", err)
	}
	m := n.Membership()
	if m == nil {
		return nil, ErrNoMembership
	}
	if p := spec.Parent; p != nil {
		if p.n != n {
			return nil, errors.New("node: parent task belongs to another node")
		}
		if p.Ended() {
			return nil, fmt.Errorf("node: parent task: %w", ErrTaskEnded)
		}
		if p.info.Depth >= identity.MaxDelegationDepth {
			return nil, ErrTaskDepth
		}
	}
	notAfter, err := taskEnd(time.Now(), spec.TTL, m.Credential().NotAfter, spec.Parent)
	if err != nil {
		return nil, err
	}
	id := spec.ID
	if id == "" {
		var b [16]byte
		rand.Read(b[:])
		id = hex.EncodeToString(b[:])
	}
	pseudonym := n.key.TaskPseudonym(id)
	key, err := identity.GeneratePrivateKey()
	if err != nil {
		return nil, err
	}
	trace := spec.TraceID
	if trace.IsZero() {
		rand.Read(trace[:])
	}
	d := identity.Delegation{
		Child: key.Public(), Owner: n.key.Public(), Class: spec.Class, Sensitivity: spec.Sensitivity,
		Scope: spec.Scope, Budget: spec.Budget, Depth: 1, NotAfter: notAfter.UTC(),
		Pseudonym: pseudonym, TraceID: trace,
	}
	signer := n.key
	var chain [][]byte
	if p := spec.Parent; p != nil {
		d.Depth = p.info.Depth + 1
		if !spec.TraceID.IsZero() && spec.TraceID != p.info.TraceID {
			return nil, fmt.Errorf("node: a sub-agent belongs to its parent's trace %s, not %s", p.info.TraceID, spec.TraceID)
		}
		d.TraceID = p.info.TraceID
		// What the caller leaves open, the sub-agent inherits: its
		// parent's scope and each of its parent's budgets.
		if len(d.Scope) == 0 {
			d.Scope = p.info.Scope
		}
		d.Budget = inheritBudget(d.Budget, p.info.Budget)
		if err := d.Within(&p.info); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrTaskWider, err)
		}
		signer, chain = p.key, append(chain, p.chain...)
	}
	d.Parent = signer.Public()
	link, err := identity.Delegate(signer, key, d)
	if err != nil {
		return nil, err
	}
	t := &Task{n: n, key: key, addr: d.ChildAddr(), info: d, chain: append(chain, link.Marshal()), parent: spec.Parent, delivered: map[netip.Addr]bool{}}
	// Register first, so that the same ID cannot start twice (its
	// pseudonym, the task's public name, would be ambiguous).
	n.mu.Lock()
	for _, o := range n.tasks {
		if o.info.Pseudonym == pseudonym {
			n.mu.Unlock()
			return nil, fmt.Errorf("%w (as %s)", ErrTaskExists, pseudonym)
		}
	}
	if n.tasks == nil {
		n.tasks = make(map[netip.Addr]*Task)
	}
	n.tasks[t.addr] = t
	n.mu.Unlock()
	if err := n.addTaskAddr(t.addr); err != nil {
		t.mu.Lock()
		t.ended = true
		t.mu.Unlock()
		n.mu.Lock()
		delete(n.tasks, t.addr)
		n.mu.Unlock()
		return nil, err
	}
	// The expiry timer starts once the task is whole: registered, with its
	// address. An End in between (through n.Tasks) found no address to
	// remove, so the address goes here.
	t.mu.Lock()
	t.live = true
	ended := t.ended
	if !ended {
		t.timer = time.AfterFunc(time.Until(d.NotAfter), func() { t.End() })
	}
	t.mu.Unlock()
	if ended {
		n.removeTaskAddr(t.addr)
	}
	n.log.Info("task started", "task", t.addr, "class", d.Class, "depth", d.Depth, "expires", d.NotAfter)
	return t, ctx.Err()
}

// taskEnd returns when a task started at now with ttl ends: at now+ttl,
// or for a zero ttl in an hour, but never after the node's credential
// (credEnd) or the parent task. A ttl that would end it later is an error
// naming both times.
func taskEnd(now time.Time, ttl time.Duration, credEnd time.Time, parent *Task) (time.Time, error) {
	limit, bound := credEnd, "the node's credential"
	if parent != nil && parent.info.NotAfter.Before(limit) {
		limit, bound = parent.info.NotAfter, "its parent task"
	}
	if ttl <= 0 {
		end := now.Add(time.Hour)
		if end.After(limit) {
			end = limit
		}
		return end, nil
	}
	end := now.Add(ttl)
	if end.After(limit) {
		return time.Time{}, fmt.Errorf("%w: TTL %s would end it at %s, after %s, which ends at %s",
			ErrTaskTTL, ttl, end.UTC().Format(time.RFC3339), bound, limit.UTC().Format(time.RFC3339))
	}
	return end, nil
}

// inheritBudget fills each limit b leaves open (zero) with parent's.
func inheritBudget(b, parent identity.Budget) identity.Budget {
	if b.Rate == 0 {
		b.Rate = parent.Rate
	}
	if b.Bytes == 0 {
		b.Bytes = parent.Bytes
	}
	if b.FanOut == 0 {
		b.FanOut = parent.FanOut
	}
	return b
}

// addTaskAddr makes a one of this node's addresses: in the identity
// table (which refuses an address another holds), on the TUN or netstack,
// and in the filter.
func (n *Node) addTaskAddr(a netip.Addr) error {
	m := n.Membership()
	if m != nil {
		if err := m.ClaimLocal(a); err != nil {
			return err
		}
	}
	var err error
	if n.tnet != nil {
		err = n.tnet.AddAddress(a)
	} else {
		err = overlay.AddTUNAddress(n.TUN, a)
	}
	if err != nil {
		if m != nil {
			m.ReleaseLocal(a)
		}
		return err
	}
	n.dev.Filter().AddTask(a)
	return nil
}

func (n *Node) removeTaskAddr(a netip.Addr) {
	if m := n.Membership(); m != nil {
		m.ReleaseLocal(a)
	}
	n.dev.Filter().RemoveTask(a)
	var err error
	if n.tnet != nil {
		err = n.tnet.RemoveAddress(a)
	} else {
		err = overlay.RemoveTUNAddress(n.TUN, a)
	}
	if err != nil {
		n.log.Warn("remove task address", "task", a, "err", err)
	}
}

// Addr returns the task's overlay address.
func (t *Task) Addr() netip.Addr { return t.addr }

// TraceID names the work the task belongs to (see TaskSpec.TraceID).
func (t *Task) TraceID() identity.TraceID { return t.info.TraceID }

// Pseudonym identifies the task to peers without revealing its ID.
func (t *Task) Pseudonym() string { return t.info.Pseudonym }

// Expires returns when the task ends on its own.
func (t *Task) Expires() time.Time { return t.info.NotAfter }

// Info describes the task as peers see it.
func (t *Task) Info() membership.TaskInfo {
	ds := make([]*identity.Delegation, 0, len(t.chain))
	for c := t; c != nil; c = c.parent {
		d := c.info
		ds = append([]*identity.Delegation{&d}, ds...)
	}
	return membership.InfoOf(ds)
}

// Ended reports whether the task has ended.
func (t *Task) Ended() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ended
}

// End ends the task: its address goes away here and every peer that held
// its delegation is told. Ending twice is not an error.
func (t *Task) End() error {
	t.mu.Lock()
	if t.ended {
		t.mu.Unlock()
		return nil
	}
	t.ended = true
	peers := make([]netip.Addr, 0, len(t.delivered))
	for p := range t.delivered {
		peers = append(peers, p)
	}
	live, timer := t.live, t.timer
	t.mu.Unlock()
	if timer != nil {
		timer.Stop()
	}
	n := t.n
	n.mu.Lock()
	delete(n.tasks, t.addr)
	closed := n.closed
	n.mu.Unlock()
	if closed || !live {
		return nil // StartTask removes the address it is adding
	}
	n.removeTaskAddr(t.addr)
	if m := n.Membership(); m != nil {
		for _, p := range peers {
			m.Withdraw(t.addr, p)
		}
	}
	n.log.Info("task ended", "task", t.addr)
	return nil
}

// Dial connects from the task's address. An address that no agent the
// node knows holds fails at once with an error wrapping ErrUnknownAddr.
func (t *Task) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	if t.Ended() {
		return nil, ErrTaskEnded
	}
	n := t.n
	dev, err := n.running()
	if err != nil {
		return nil, fmt.Errorf("node: dial: %w", err)
	}
	ap, err := n.dialTarget(dev, network, address)
	if err != nil {
		return nil, err
	}
	from := netip.AddrPortFrom(t.addr, 0)
	switch network {
	case "tcp", "tcp6":
		if n.tnet != nil {
			return n.tnet.DialTCPFrom(ctx, from, ap)
		}
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(from)}
		return d.DialContext(ctx, "tcp6", ap.String())
	case "udp", "udp6":
		if n.tnet != nil {
			return n.tnet.DialUDP(from, ap)
		}
		d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(from)}
		return d.DialContext(ctx, "udp6", ap.String())
	}
	return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
}

// Listen listens for TCP on the task's address (":port").
func (t *Task) Listen(network, address string) (net.Listener, error) {
	_, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	return t.n.Listen(network, net.JoinHostPort(t.addr.String(), port))
}

// ListenPacket listens for UDP on the task's address (":port").
func (t *Task) ListenPacket(network, address string) (net.PacketConn, error) {
	_, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	return t.n.ListenPacket(network, net.JoinHostPort(t.addr.String(), port))
}

// onHold is the filter's OnHold: deliver the task's delegation to the
// owner of dst, then release (or discard) the held packets. It runs on the
// packet path, so the delivery runs in a goroutine owned by the node.
func (n *Node) onHold(task, dst netip.Addr) {
	n.mu.Lock()
	t := n.tasks[task]
	ctx := n.ctx
	closed := n.closed
	if t != nil && !closed {
		n.wg.Add(1)
	}
	n.mu.Unlock()
	if t == nil || closed {
		n.dev.Filter().Discard(task, dst)
		return
	}
	go func() {
		defer n.wg.Done()
		n.deliver(ctx, t, dst)
	}()
}

func (n *Node) deliver(ctx context.Context, t *Task, dst netip.Addr) {
	m := n.Membership()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	owner, err := m.Deliver(ctx, t.addr, dst, t.chain)
	f := n.dev.Filter()
	if err != nil {
		n.log.Warn("task delegation not delivered; its packets are dropped", "task", t.addr, "addr", dst, "err", err)
		f.Discard(t.addr, dst)
		return
	}
	t.mu.Lock()
	t.delivered[owner] = true
	t.mu.Unlock()
	f.Release(t.addr, dst)
}

// forgetPeer voids the task deliveries to a removed peer.
func (n *Node) forgetPeer(addr netip.Addr) {
	n.mu.Lock()
	tasks := make([]*Task, 0, len(n.tasks))
	for _, t := range n.tasks {
		tasks = append(tasks, t)
	}
	n.mu.Unlock()
	for _, t := range tasks {
		t.mu.Lock()
		delete(t.delivered, addr)
		t.mu.Unlock()
		n.dev.Filter().Forget(t.addr, addr)
	}
}

// Task returns the running task at addr.
func (n *Node) Task(addr netip.Addr) (*Task, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	t, ok := n.tasks[addr]
	return t, ok
}

// Tasks returns the running tasks.
func (n *Node) Tasks() []*Task {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*Task, 0, len(n.tasks))
	for _, t := range n.tasks {
		out = append(out, t)
	}
	return out
}
