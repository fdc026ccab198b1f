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

// TaskPort is the UDP port, on each node's overlay address, where
// delegations are delivered. Frames travel inside WireGuard, so their
// source address is the authenticated owner.
const TaskPort = 7947

// Task frames: magic | version | type | body.
const (
	frameDelegate = 3 // body: n(1) then n × (len(2) | SignedRecord), root first
	frameDAck     = 4 // body: task address(16)
	frameEnd      = 5 // body: task address(16)
	// frameLeave: the sender is leaving the cluster (body: none). It
	// travels inside WireGuard, so its source is authenticated; memberlist
	// cannot tell its receivers a graceful leave from a death (v0.7.0
	// hands NotifyLeave a Node whose State is never set), and a death is
	// given a grace before its peer is removed (markDead).
	frameLeave = 6
)

// ReasonBadDelegation counts delegations refused: forged, broken chain,
// expired, too deep, or from a node that is not the owner.
const ReasonBadDelegation Reason = "bad_delegation"

// ErrNotPeer reports a destination that is no admitted agent.
var ErrNotPeer = errors.New("membership: destination is not an admitted agent or one of its tasks")

// remoteTask is a peer's task this node has accepted.
type remoteTask struct {
	chain []*identity.Delegation // root first; the last is the task
	info  TaskInfo               // computed once: WhoIs is on hot paths
}

func (t *remoteTask) leaf() *identity.Delegation { return t.chain[len(t.chain)-1] }

// TaskInfo describes a delegated identity: the agent it belongs to and
// the delegation chain from that agent down to it.
type TaskInfo struct {
	Addr        netip.Addr      `json:"address"`
	Owner       netip.Addr      `json:"owner"`
	Parents     []netip.Addr    `json:"parents"` // owner first, then parent tasks
	Class       string          `json:"class,omitempty"`
	Sensitivity string          `json:"sensitivity,omitempty"`
	Scope       []string        `json:"scope,omitempty"`
	Budget      identity.Budget `json:"budget,omitzero"`
	Pseudonym   string          `json:"pseudonym"`
	Depth       int             `json:"depth"`
	Expires     time.Time       `json:"expires"`
}

// InfoOf describes the task at the end of chain.
func InfoOf(chain []*identity.Delegation) TaskInfo {
	leaf := chain[len(chain)-1]
	owner, _ := leaf.Owner.Addr()
	ti := TaskInfo{Addr: leaf.ChildAddr(), Owner: owner, Class: leaf.Class, Sensitivity: leaf.Sensitivity,
		Scope: leaf.Scope, Budget: leaf.Budget, Pseudonym: leaf.Pseudonym, Depth: leaf.Depth, Expires: leaf.NotAfter}
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
		b := buf[:n]
		if len(b) < 3 || b[0] != ctrlMagic || b[1] != ctrlVersion {
			m.refuse(refusal(ReasonMalformed, errors.New("task frame header")), "addr", src.Addr())
			continue
		}
		switch b[2] {
		case frameDAck:
			if len(b) == 3+16 {
				m.tasksvc.acked(netip.AddrFrom16([16]byte(b[3:19])), src.Addr())
			}
		case frameDelegate, frameEnd, frameLeave:
			m.enqueue(event{kind: evTask, from: src, data: append([]byte(nil), b...)})
		default:
			m.refuse(refusal(ReasonMalformed, fmt.Errorf("task frame type %d", b[2])), "addr", src.Addr())
		}
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

// handleTaskFrame processes a DELEGATE, END or LEAVE from a peer. Called
// by the actor only.
func (m *Membership) handleTaskFrame(from netip.AddrPort, b []byte) {
	m.mu.Lock()
	p := m.peers[from.Addr()]
	var owner identity.PublicKey
	admitted := p != nil && p.admitted
	if admitted {
		owner = p.rec.agentKey
	}
	m.mu.Unlock()
	if !admitted {
		m.refuse(refusal(ReasonBadDelegation, fmt.Errorf("task frame from %s, which is not an admitted agent", from.Addr())))
		return
	}
	if b[2] == frameLeave {
		m.log.Info("peer is leaving", "addr", from.Addr())
		m.remove(from.Addr(), "left")
		return
	}
	if b[2] == frameEnd {
		if len(b) == 3+16 {
			m.dropTask(from.Addr(), netip.AddrFrom16([16]byte(b[3:19])))
		}
		return
	}
	chain, err := parseChain(b[3:], owner, time.Now())
	if err != nil {
		m.refuse(refusal(ReasonBadDelegation, err), "addr", from.Addr())
		return
	}
	task := chain[len(chain)-1].ChildAddr()
	m.mu.Lock()
	if other := m.peers[task]; other != nil {
		m.mu.Unlock()
		m.refuse(refusal(ReasonAddrConflict, fmt.Errorf("task address %s is an agent's", task)))
		return
	}
	if a, taken := m.taskOwner[task]; taken && a != from.Addr() {
		m.mu.Unlock()
		m.refuse(refusal(ReasonAddrConflict, fmt.Errorf("task address %s is held by %s", task, a)))
		return
	}
	_, known := p.tasks[task]
	if !known {
		if p.tasks == nil {
			p.tasks = make(map[netip.Addr]*remoteTask)
		}
		p.tasks[task] = &remoteTask{chain: chain, info: InfoOf(chain)}
		m.taskOwner[task] = from.Addr()
	}
	key, ep := p.rec.wgKey, p.endpoint
	m.mu.Unlock()
	if !known {
		if err := m.cfg.Peers.SetPeer(key, ep, m.taskPrefixes(from.Addr())); err != nil {
			m.log.Error("cannot add task address to WireGuard peer", "peer", key.ShortString(), "task", task, "err", err)
			return
		}
		m.log.Info("task accepted", "addr", from.Addr(), "task", task, "class", chain[len(chain)-1].Class, "depth", len(chain))
	}
	frame := append([]byte{ctrlMagic, ctrlVersion, frameDAck}, task.AsSlice()...)
	m.tasksvc.pc.WriteTo(frame, net.UDPAddrFromAddrPort(netip.AddrPortFrom(from.Addr(), TaskPort)))
}

// parseChain verifies a delegation chain rooted at owner: every record
// signed by its parent, depths 1, 2, ..., none expired.
func parseChain(b []byte, owner identity.PublicKey, now time.Time) ([]*identity.Delegation, error) {
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
		sr, err := identity.ParseSignedRecord(b[2 : 2+l])
		if err != nil {
			return nil, err
		}
		d, err := identity.ParseDelegation(sr)
		if err != nil {
			return nil, err
		}
		switch {
		case !d.Owner.Equal(owner):
			return nil, fmt.Errorf("delegation %d belongs to another owner", i)
		case !d.Parent.Equal(parent):
			return nil, fmt.Errorf("delegation %d is not signed by the previous link", i)
		case d.Depth != i+1:
			return nil, fmt.Errorf("delegation %d has depth %d", i, d.Depth)
		case !now.Before(d.NotAfter):
			return nil, fmt.Errorf("delegation %d expired at %s", i, d.NotAfter)
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

// EncodeChain frames a delegation chain (root first) for delivery.
func EncodeChain(chain [][]byte) []byte {
	out := []byte{ctrlMagic, ctrlVersion, frameDelegate, byte(len(chain))}
	for _, r := range chain {
		out = binary.BigEndian.AppendUint16(out, uint16(len(r)))
		out = append(out, r...)
	}
	return out
}

// taskPrefixes returns the /128s of the tasks this node accepted from the
// agent at addr.
func (m *Membership) taskPrefixes(addr netip.Addr) []netip.Prefix {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[addr]
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
	p := m.peers[owner]
	if p == nil || p.tasks[task] == nil {
		m.mu.Unlock()
		return
	}
	delete(p.tasks, task)
	delete(m.taskOwner, task)
	key, ep, admitted := p.rec.wgKey, p.endpoint, p.admitted
	m.mu.Unlock()
	if admitted {
		if err := m.cfg.Peers.SetPeer(key, ep, m.taskPrefixes(owner)); err != nil {
			m.log.Error("cannot remove task address", "task", task, "err", err)
		}
	}
	m.log.Info("task removed", "addr", owner, "task", task)
}

// sweepTasks drops expired tasks of every peer.
func (m *Membership) sweepTasks(now time.Time) {
	var gone [][2]netip.Addr
	m.mu.Lock()
	for a, p := range m.peers {
		for t, rt := range p.tasks {
			for _, d := range rt.chain {
				if !now.Before(d.NotAfter) {
					gone = append(gone, [2]netip.Addr{a, t})
					break
				}
			}
		}
	}
	m.mu.Unlock()
	for _, g := range gone {
		m.dropTask(g[0], g[1])
	}
}

// Deliver gives the agent that owns dst the delegation chain (records,
// root first) of the local task at task, waiting for its acknowledgement
// (one round trip through the tunnel, resent every 250 ms) until ctx is
// done. It returns the owner's address.
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
	frame := EncodeChain(chain)
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(owner, TaskPort))
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := s.pc.WriteTo(frame, to); err != nil && !errors.Is(err, net.ErrClosed) {
			m.log.Debug("delegation send", "task", task, "addr", owner, "err", err)
		}
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
func (m *Membership) Withdraw(task, owner netip.Addr) {
	frame := append([]byte{ctrlMagic, ctrlVersion, frameEnd}, task.AsSlice()...)
	m.tasksvc.pc.WriteTo(frame, net.UDPAddrFromAddrPort(netip.AddrPortFrom(owner, TaskPort)))
}

// ownerOf returns the admitted agent that dst is, or whose task dst is.
func (m *Membership) ownerOf(dst netip.Addr) (netip.Addr, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.peers[dst]; p != nil && p.admitted {
		return dst, true
	}
	if a, ok := m.taskOwner[dst]; ok {
		if p := m.peers[a]; p != nil && p.admitted {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// LookupTask describes a peer's task this node accepted.
func (m *Membership) LookupTask(addr netip.Addr) (TaskInfo, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	owner, ok := m.taskOwner[addr]
	if !ok {
		return TaskInfo{}, false
	}
	if t := m.peers[owner].tasks[addr]; t != nil {
		return t.info, true
	}
	return TaskInfo{}, false
}
