package membership

import (
	"fmt"
	"net/netip"

	"github.com/agent6/agent6/identity"
)

// Kind says who holds an overlay address.
type Kind uint8

const (
	KindSelf      Kind = iota + 1 // this node
	KindLocalTask                 // a task (or sub-agent) of this node
	KindAgent                     // another agent
	KindTask                      // a task of another agent, whose delegation this node accepted
)

func (k Kind) String() string {
	switch k {
	case KindSelf:
		return "self"
	case KindLocalTask:
		return "local-task"
	case KindAgent:
		return "agent"
	case KindTask:
		return "task"
	}
	return "unknown"
}

// idTable is the one table of who holds each overlay address this node
// knows: itself, its own tasks, other agents and their tasks. Every
// question about an address (WhoIs, DNS, Discover, where a packet's
// WireGuard peer is, whom a delegation is delivered to) reads it, and its
// invariants hold because every change goes through claimAgent,
// claimTask and claimLocal:
//
//   - an address has one holder;
//   - this node's own address and tasks are never another's;
//   - a peer's task is never an agent's address (known to this node,
//     admitted or not) nor another peer's task;
//   - when an agent is admitted whose address a peer's task claims, the
//     agent wins: the claim is dropped and counted (task_displaced).
//
// With proof of possession (identity.Link) a task's address is claimable
// only by the holder of its key, so the last rule undoes what only a key
// holder could do. It is guarded by Membership.mu.
type idTable struct {
	self   netip.Addr
	local  map[netip.Addr]bool
	agents map[netip.Addr]*peer
	tasks  map[netip.Addr]*remoteTask
}

func newIDTable(self netip.Addr) idTable {
	return idTable{self: self, local: make(map[netip.Addr]bool), agents: make(map[netip.Addr]*peer), tasks: make(map[netip.Addr]*remoteTask)}
}

// kind returns who holds a, or 0.
func (t *idTable) kind(a netip.Addr) Kind {
	switch {
	case a == t.self:
		return KindSelf
	case t.local[a]:
		return KindLocalTask
	case t.agents[a] != nil:
		return KindAgent
	case t.tasks[a] != nil:
		return KindTask
	}
	return 0
}

// remoteTask is a peer's task this node has accepted.
type remoteTask struct {
	owner netip.Addr
	chain []*identity.Delegation // root first; the last is the task
	info  TaskInfo               // computed once: WhoIs is on hot paths
}

func (t *remoteTask) leaf() *identity.Delegation { return t.chain[len(t.chain)-1] }

// errTaskLimit is a refusal of a task beyond a peer's allowance.
var errTaskLimit = fmt.Errorf("too many tasks")

// claimTask records task, delegated by the agent at owner (admitted, p),
// unless its address is held by anyone else or p holds max tasks. It
// reports whether the task is new.
func (t *idTable) claimTask(p *peer, rt *remoteTask, max int) (bool, error) {
	a := rt.info.Addr
	switch t.kind(a) {
	case 0:
	case KindTask:
		if o := t.tasks[a].owner; o != rt.owner {
			return false, refusal(ReasonAddrConflict, fmt.Errorf("task address %s is held by %s", a, o))
		}
		t.tasks[a] = rt // a renewed delegation of the same task
		p.tasks[a] = rt
		return false, nil
	case KindSelf:
		return false, refusal(ReasonAddrConflict, fmt.Errorf("task address %s is this node's own", a))
	case KindLocalTask:
		return false, refusal(ReasonAddrConflict, fmt.Errorf("task address %s is a task of this node", a))
	case KindAgent:
		return false, refusal(ReasonAddrConflict, fmt.Errorf("task address %s is an agent's", a))
	}
	if len(p.tasks) >= max {
		return false, refusal(ReasonTaskLimit, fmt.Errorf("%w: the agent already holds %d here", errTaskLimit, len(p.tasks)))
	}
	if p.tasks == nil {
		p.tasks = make(map[netip.Addr]*remoteTask)
	}
	p.tasks[a] = rt
	t.tasks[a] = rt
	return true, nil
}

// dropTask forgets a peer's task and returns it, or nil.
func (t *idTable) dropTask(a netip.Addr) *remoteTask {
	rt := t.tasks[a]
	if rt == nil {
		return nil
	}
	delete(t.tasks, a)
	if p := t.agents[rt.owner]; p != nil {
		delete(p.tasks, a)
	}
	return rt
}

// dropTasksOf forgets every task of p.
func (t *idTable) dropTasksOf(p *peer) {
	for a := range p.tasks {
		delete(t.tasks, a)
	}
	p.tasks = nil
}

// addAgent records the agent at a (its record verified). If a peer's task
// claims a, the claim is dropped and returned: the agent wins.
func (t *idTable) addAgent(a netip.Addr, p *peer) (displaced *remoteTask, err error) {
	switch t.kind(a) {
	case KindSelf, KindLocalTask:
		return nil, refusal(ReasonAddrConflict, fmt.Errorf("address %s is this node's", a))
	case KindTask:
		displaced = t.dropTask(a)
	}
	t.agents[a] = p
	return displaced, nil
}

// claimLocal records a task of this node.
func (t *idTable) claimLocal(a netip.Addr) error {
	if k := t.kind(a); k != 0 && k != KindLocalTask {
		return fmt.Errorf("membership: address %s is held by a %s", a, k)
	}
	t.local[a] = true
	return nil
}
