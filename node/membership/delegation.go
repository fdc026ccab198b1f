package membership

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/agent6/agent6/identity"
)

// TaskPort is the UDP port, on each node's overlay address, where peer
// frames (delegations, their acknowledgements, task ends, leaves) are
// delivered. They travel inside WireGuard, so their source address is an
// admitted agent's, and each is signed by that agent's key, so that no
// other process on the agent's host — which can bind its address — can
// send one.
const TaskPort = 7947

// Limits on peer frames, per peer and in all: a task start costs one
// DELEGATE per peer it talks to (resent every 250 ms until acknowledged),
// a task end one END.
const (
	peerPerSource  = 200
	peerBurst      = 400
	peerTotal      = 4000
	peerTotalBurst = 8000
)

// ReasonBadDelegation counts delegations refused: forged, not accepted by
// their child, broken chain, expired, wider than their parent, too deep,
// or from a node that is not the owner.
const ReasonBadDelegation Reason = "bad_delegation"

var errPeerRate = errors.New("peer frames over the source's rate")

// ErrNotPeer reports a destination that is no admitted agent.
var ErrNotPeer = errors.New("membership: destination is not an admitted agent or one of its tasks")

// TaskInfo describes a delegated identity: the agent it belongs to and
// the delegation chain from that agent down to it.
type TaskInfo struct {
	Addr        netip.Addr       `json:"address"`
	Owner       netip.Addr       `json:"owner"`
	Parents     []netip.Addr     `json:"parents"` // owner first, then parent tasks
	Class       string           `json:"class,omitempty"`
	Sensitivity string           `json:"sensitivity,omitempty"`
	Scope       []string         `json:"scope,omitempty"`
	Budget      identity.Budget  `json:"budget,omitzero"`
	Pseudonym   string           `json:"pseudonym"`
	TraceID     identity.TraceID `json:"trace_id,omitzero"`
	Depth       int              `json:"depth"`
	Expires     time.Time        `json:"expires"`
}

// InfoOf describes the task at the end of chain.
func InfoOf(chain []*identity.Delegation) TaskInfo {
	leaf := chain[len(chain)-1]
	owner, _ := leaf.Owner.Addr()
	ti := TaskInfo{Addr: leaf.ChildAddr(), Owner: owner, Class: leaf.Class, Sensitivity: leaf.Sensitivity,
		Scope: leaf.Scope, Budget: leaf.Budget, Pseudonym: leaf.Pseudonym, TraceID: leaf.TraceID, Depth: leaf.Depth, Expires: leaf.NotAfter}
	ti.Parents = append(ti.Parents, owner)
	for _, d := range chain[:len(chain)-1] {
		ti.Parents = append(ti.Parents, d.ChildAddr())
	}
	return ti
}

type taskService struct {
	pc net.PacketConn

	mu      sync.Mutex
	waiters map[[2]netip.Addr]chan struct{} // (task, peer) → closed on DACK
}

func (m *Membership) startTaskService() error {
	pc, err := m.cfg.Network.ListenPacket("udp", netip.AddrPortFrom(m.addr, TaskPort).String())
	if err != nil {
		return fmt.Errorf("membership: task port: %w", err)
	}
	m.tasksvc = &taskService{pc: pc, waiters: make(map[[2]netip.Addr]chan struct{})}
	m.wg.Go(m.taskReadLoop)
	return nil
}

// taskReadLoop reads peer frames: the header and the source's rate are
// checked here; DACKs are verified here (they only wake a delivery); the
// rest go to the actor.
func (m *Membership) taskReadLoop() {
	buf := make([]byte, 65536)
	for {
		n, from, err := m.tasksvc.pc.ReadFrom(buf)
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		src := from.(*net.UDPAddr).AddrPort()
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		b := buf[:n]
		typ, err := frameHeader(b)
		if err == nil && (typ < frameDel || typ > frameLeave) {
			err = fmt.Errorf("%w: type %d is not a peer frame", errFrame, typ)
		}
		if err != nil {
			m.refuse(refusal(ReasonMalformed, err), "addr", src.Addr())
			continue
		}
		if !m.peerLimit.allow(src, time.Now()) {
			if n, due := m.count(ReasonRateLimited); due {
				m.log.Warn("refused", "reason", string(ReasonRateLimited), "err", errPeerRate, "total", n, "addr", src.Addr())
			}
			continue
		}
		if typ == frameDAck {
			if f, err := m.openPeerFrame(src, b); err == nil {
				m.tasksvc.acked(f.taskAddr(), src.Addr())
			}
			continue
		}
		m.enqueue(event{kind: evPeer, from: src, data: append([]byte(nil), b...)})
	}
}

func (s *taskService) acked(task, peer netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.waiters[[2]netip.Addr{task, peer}]; w != nil {
		close(w)
		delete(s.waiters, [2]netip.Addr{task, peer})
	}
}

// openPeerFrame decodes and verifies a peer frame from src: it must come
// from an admitted agent, be signed by that agent's key, be addressed to
// this node and be fresh (never accepted before). The cheap checks come
// before the signature check. Refusals are counted.
func (m *Membership) openPeerFrame(src netip.AddrPort, b []byte) (*peerFrame, error) {
	f, err := openPeer(b)
	if err != nil {
		err = refusal(ReasonMalformed, err)
		m.refuse(err, "addr", src.Addr())
		return nil, err
	}
	m.mu.Lock()
	p := m.ids.agents[src.Addr()]
	var ferr error
	switch {
	case p == nil || !p.admitted():
		ferr = refusal(ReasonNotPeer, fmt.Errorf("peer frame from %s, which is not an admitted agent", src.Addr()))
	case !f.sr.Signer.Equal(p.rec.agentKey):
		ferr = refusal(ReasonBadSignature, fmt.Errorf("peer frame from %s signed by another key", src.Addr()))
	case f.to != m.addr:
		ferr = refusal(ReasonForeign, fmt.Errorf("peer frame for %s", f.to))
	default:
		if err := p.recent.fresh(f.ts, time.Now()); err != nil {
			ferr = refusal(ReasonReplay, err)
		}
	}
	m.mu.Unlock()
	if ferr != nil {
		m.refuse(ferr, "addr", src.Addr())
		return nil, ferr
	}
	if err := f.verify(); err != nil {
		err = refusal(ReasonBadSignature, err)
		m.refuse(err, "addr", src.Addr())
		return nil, err
	}
	m.mu.Lock()
	if p.recent.fresh(f.ts, time.Now()) != nil { // accepted meanwhile: a duplicate
		m.mu.Unlock()
		err := refusal(ReasonReplay, errors.New("peer frame accepted twice"))
		m.refuse(err, "addr", src.Addr())
		return nil, err
	}
	p.recent.add(f.ts)
	m.mu.Unlock()
	return f, nil
}

// handlePeerFrame processes a DELEGATE, END or LEAVE from a peer. Called
// by the actor only.
func (m *Membership) handlePeerFrame(from netip.AddrPort, b []byte) {
	f, err := m.openPeerFrame(from, b)
	if err != nil {
		return
	}
	switch f.typ {
	case frameLeave:
		m.log.Info("peer is leaving", "addr", from.Addr())
		m.remove(from.Addr(), StateLeft)
	case frameEnd:
		m.dropTask(from.Addr(), f.taskAddr())
	case frameDel:
		m.acceptDelegation(from.Addr(), f.body)
	}
}

// acceptDelegation verifies a delegation chain from the agent at owner
// and, if the identity table lets the task's address be claimed, adds it
// to the agent's WireGuard peer and acknowledges it.
func (m *Membership) acceptDelegation(owner netip.Addr, body []byte) {
	m.mu.Lock()
	p := m.ids.agents[owner]
	if p == nil || !p.admitted() {
		m.mu.Unlock()
		return
	}
	ownerKey, credEnd := p.rec.agentKey, p.cred.NotAfter
	m.mu.Unlock()
	chain, err := parseChain(body, ownerKey, credEnd, time.Now())
	if err != nil {
		m.refuse(refusal(ReasonBadDelegation, err), "addr", owner)
		return
	}
	rt := &remoteTask{owner: owner, chain: chain, info: InfoOf(chain)}
	task := rt.info.Addr
	m.mu.Lock()
	if p = m.ids.agents[owner]; p == nil || !p.admitted() {
		m.mu.Unlock()
		return
	}
	isNew, err := m.ids.claimTask(p, rt, m.cfg.MaxTasksPerPeer)
	key := p.rec.wgKey
	m.mu.Unlock()
	if err != nil {
		m.refuse(err, "addr", owner, "task", task)
		return
	}
	if isNew {
		if err := m.cfg.Peers.AllowTask(key, task, true); err != nil {
			m.log.Error("cannot add task address to WireGuard peer", "peer", key.ShortString(), "task", task, "err", err)
			m.mu.Lock()
			m.ids.dropTask(task)
			m.mu.Unlock()
			return
		}
		m.log.Info("task accepted", "addr", owner, "task", task, "class", rt.leaf().Class, "depth", len(chain))
	}
	m.sendPeer(owner, frameDAck, task.AsSlice())
}

// sendPeer sends a signed peer frame to the task port of the agent at to.
func (m *Membership) sendPeer(to netip.Addr, typ byte, body []byte) {
	frame, err := sealPeer(m.cfg.Key, typ, to, m.nextTS(), body)
	if err != nil {
		m.log.Debug("peer frame not sealed", "addr", to, "err", err)
		return
	}
	if _, err := m.tasksvc.pc.WriteTo(frame, net.UDPAddrFromAddrPort(netip.AddrPortFrom(to, TaskPort))); err != nil && !errors.Is(err, net.ErrClosed) {
		m.log.Debug("peer frame not sent", "addr", to, "err", err)
	}
}

// parseChain verifies a DELEGATE body, a delegation chain rooted at owner
// (whose credential ends at credEnd): every link signed by its parent and
// accepted by its child (identity.ParseLink), depths 1, 2, ..., none
// expired, each within its parent (identity.Delegation.Within) and the
// first within the owner's credential.
func parseChain(b []byte, owner identity.PublicKey, credEnd, now time.Time) ([]*identity.Delegation, error) {
	if len(b) < 1 {
		return nil, errors.New("empty delegation chain")
	}
	n := int(b[0])
	if n < 1 || n > identity.MaxDelegationDepth {
		return nil, fmt.Errorf("chain of %d delegations, want 1..%d", n, identity.MaxDelegationDepth)
	}
	b = b[1:]
	chain := make([]*identity.Delegation, 0, n)
	parent := owner
	for i := range n {
		if len(b) < 2 || len(b) < 2+int(binary.BigEndian.Uint16(b)) {
			return nil, errors.New("truncated delegation chain")
		}
		l := int(binary.BigEndian.Uint16(b))
		d, rest, err := identity.ParseLink(b[2 : 2+l])
		if err != nil {
			return nil, err
		}
		switch {
		case len(rest) != 0:
			return nil, fmt.Errorf("delegation %d: trailing bytes", i)
		case !d.Owner.Equal(owner):
			return nil, fmt.Errorf("delegation %d belongs to another owner", i)
		case !d.Parent.Equal(parent):
			return nil, fmt.Errorf("delegation %d is not signed by the previous link", i)
		case d.Depth != i+1:
			return nil, fmt.Errorf("delegation %d has depth %d", i, d.Depth)
		case !now.Before(d.NotAfter):
			return nil, fmt.Errorf("delegation %d expired at %s", i, d.NotAfter)
		case i == 0 && d.NotAfter.After(credEnd):
			return nil, fmt.Errorf("delegation outlives its agent's credential (%s)", credEnd.Format(time.RFC3339))
		}
		if i > 0 {
			if err := d.Within(chain[i-1]); err != nil {
				return nil, fmt.Errorf("delegation %d: %w", i, err)
			}
		}
		chain = append(chain, d)
		parent = d.Child
		b = b[2+l:]
	}
	if len(b) != 0 {
		return nil, errors.New("trailing bytes after delegation chain")
	}
	return chain, nil
}

// taskPrefixes returns the /128s of the tasks this node accepted from the
// agent at addr.
func (m *Membership) taskPrefixes(addr netip.Addr) []netip.Prefix {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.ids.agents[addr]
	if p == nil {
		return nil
	}
	out := make([]netip.Prefix, 0, len(p.tasks))
	for a := range p.tasks {
		out = append(out, netip.PrefixFrom(a, 128))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr().Less(out[j].Addr()) })
	return out
}

// dropTask withdraws a peer's task (ended or expired).
func (m *Membership) dropTask(owner, task netip.Addr) {
	m.mu.Lock()
	rt := m.ids.tasks[task]
	if rt == nil || rt.owner != owner {
		m.mu.Unlock()
		return
	}
	m.ids.dropTask(task)
	p := m.ids.agents[owner]
	m.mu.Unlock()
	if p != nil && p.admitted() {
		if err := m.cfg.Peers.AllowTask(p.rec.wgKey, task, false); err != nil {
			m.log.Error("cannot remove task address", "task", task, "err", err)
		}
	}
	m.log.Info("task removed", "addr", owner, "task", task)
}

// sweepTasks drops expired tasks of every peer.
func (m *Membership) sweepTasks(now time.Time) {
	var gone [][2]netip.Addr
	m.mu.Lock()
	for t, rt := range m.ids.tasks {
		if !now.Before(rt.info.Expires) {
			gone = append(gone, [2]netip.Addr{rt.owner, t})
		}
	}
	m.mu.Unlock()
	for _, g := range gone {
		m.dropTask(g[0], g[1])
	}
}

// Deliver gives the agent that owns dst the delegation chain (links,
// identity.Link encodings, root first) of the local task at task, waiting
// for its acknowledgement (one round trip through the tunnel, resent
// every 250 ms) until ctx is done. It returns the owner's address.
func (m *Membership) Deliver(ctx context.Context, task, dst netip.Addr, chain [][]byte) (netip.Addr, error) {
	owner, ok := m.ownerOf(dst)
	if !ok {
		return netip.Addr{}, fmt.Errorf("%w: %s", ErrNotPeer, dst)
	}
	key := [2]netip.Addr{task, owner}
	s := m.tasksvc
	s.mu.Lock()
	w := s.waiters[key]
	if w == nil {
		w = make(chan struct{})
		s.waiters[key] = w
	}
	s.mu.Unlock()
	body := encodeLinks(chain)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		m.sendPeer(owner, frameDel, body) // each resend with a fresh timestamp
		select {
		case <-w:
			return owner, nil
		case <-tick.C:
		case <-ctx.Done():
			s.mu.Lock()
			if s.waiters[key] == w {
				delete(s.waiters, key)
			}
			s.mu.Unlock()
			return owner, fmt.Errorf("membership: delegation of %s to %s not acknowledged: %w", task, owner, ctx.Err())
		case <-m.done:
			return owner, net.ErrClosed
		}
	}
}

// Withdraw tells the agent at owner that the task ended (best effort).
func (m *Membership) Withdraw(task, owner netip.Addr) { m.sendPeer(owner, frameEnd, task.AsSlice()) }

// ownerOf returns the admitted agent that dst is, or whose task dst is.
func (m *Membership) ownerOf(dst netip.Addr) (netip.Addr, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.ids.agents[dst]; p != nil && p.admitted() {
		return dst, true
	}
	if rt := m.ids.tasks[dst]; rt != nil {
		if p := m.ids.agents[rt.owner]; p != nil && p.admitted() {
			return rt.owner, true
		}
	}
	return netip.Addr{}, false
}

// LookupTask describes a peer's task this node accepted.
func (m *Membership) LookupTask(addr netip.Addr) (TaskInfo, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if rt := m.ids.tasks[addr]; rt != nil {
		return rt.info, true
	}
	return TaskInfo{}, false
}

// recent remembers the timestamps of the last frames accepted from one
// sender, so that none is accepted twice. Frames may arrive out of order
// (UDP), so rather than wanting each later than the last it keeps a
// window: a frame is fresh if it is within frameWindow of this node's
// clock, not one of the last len(ts) accepted, and, once the window is
// full, later than the oldest of them.
type recent struct {
	ts [32]int64
	n  int
}

func (r *recent) fresh(ts int64, now time.Time) error {
	if err := fresh(ts, 0, now); err != nil {
		return err
	}
	oldest := int64(0)
	for i, t := range r.ts[:r.n] {
		if t == ts {
			return errors.New("a frame accepted before: a replay")
		}
		if i == 0 || t < oldest {
			oldest = t
		}
	}
	if r.n == len(r.ts) && ts <= oldest {
		return errors.New("a frame older than the replay window")
	}
	return nil
}

// add records ts, replacing the oldest when the window is full.
func (r *recent) add(ts int64) {
	if r.n < len(r.ts) {
		r.ts[r.n] = ts
		r.n++
		return
	}
	i := 0
	for j, t := range r.ts {
		if t < r.ts[i] {
			i = j
		}
	}
	r.ts[i] = ts
}
