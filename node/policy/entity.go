package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/cedar-policy/cedar-go/types"

	"github.com/agent6/agent6/identity"
)

// Agent is an agent as policy sees it: its address, the organisation
// identity from its verified credential and what its card says it can do.
// It is a plain value; whoever builds it (membership, a test) vouches for
// it. Treat its slices as read-only once it is in a Request.
type Agent struct {
	Addr        netip.Addr // its overlay address, as `agent6 addr` prints it
	ID          string     // SPIFFE ID, spiffe://<trust-domain>/agent/<name>
	TrustDomain string     // "" for an agent without a verified credential
	Groups      []string   // from the credential
	Roles       []string   // from the credential
	Skills      []string   // the ids of its card's skills
	Tags        []string   // the tags of its card's skills
}

// Task is a delegated identity (a task or sub-agent) as policy sees it:
// what its signed delegation says.
type Task struct {
	Addr        netip.Addr
	Owner       netip.Addr   // the agent at the root of its delegation chain
	Parents     []netip.Addr // its ancestor tasks, nearest first; none at depth 1
	Class       string
	Sensitivity string
	Depth       int    // 1 for an agent's own task
	Pseudonym   string // HMAC of the task id under the owner's key, never the id
	Scope       Scope  // what it may reach (ParseScope); the zero Scope limits nothing
	Budget      identity.Budget
}

// Party is one end of a flow: an agent, or a task of an agent.
type Party struct {
	// Agent is the agent itself or, for a task, the agent that owns it.
	Agent Agent
	// Tasks is empty for the agent itself. For a task it is the task, then
	// those of its ancestors the caller holds, nearest first: their scopes
	// narrow the task's, and its use counts against their budgets.
	Tasks []Task
}

// AgentParty returns the party of agent a.
func AgentParty(a Agent) Party { return Party{Agent: a} }

// TaskParty returns the party of task t, owned by agent owner, with the
// ancestors of t that the caller holds, nearest first.
func TaskParty(owner Agent, t Task, ancestors ...Task) Party {
	return Party{Agent: owner, Tasks: append([]Task{t}, ancestors...)}
}

// Addr returns the party's address: the task's, or the agent's.
func (p *Party) Addr() netip.Addr {
	if len(p.Tasks) > 0 {
		return p.Tasks[0].Addr
	}
	return p.Agent.Addr
}

// TrustDomain returns the trust domain of the party's agent, whose policy
// document governs the party.
func (p *Party) TrustDomain() string { return p.Agent.TrustDomain }

// IsTask reports whether the party is a task.
func (p *Party) IsTask() bool { return len(p.Tasks) > 0 }

// String names the party for messages: its address and SPIFFE ID.
func (p *Party) String() string {
	id := p.Agent.ID
	if id == "" {
		id = "no credential"
	}
	if p.IsTask() {
		return fmt.Sprintf("task %s of %s (%s)", p.Tasks[0].Addr, p.Agent.Addr, id)
	}
	return fmt.Sprintf("%s (%s)", p.Agent.Addr, id)
}

// Action is what a request asks to do.
type Action uint8

const (
	// ActionConnect: open a flow (TCP, UDP or ICMP) to the resource. Its
	// Cedar context is {proto: String, port: Long}.
	ActionConnect Action = iota
	// ActionDiscover: learn the resource exists (discovery, DNS). No context.
	ActionDiscover
	// ActionAudit: read the resource's flow records (the audit log). No
	// context.
	ActionAudit
	numActions
)

var actionNames = [numActions]string{ActionConnect: "connect", ActionDiscover: "discover", ActionAudit: "audit"}

func (a Action) String() string {
	if a < numActions {
		return actionNames[a]
	}
	return "action-" + strconv.Itoa(int(a))
}

// ParseAction returns the action named s: connect, discover or audit.
func ParseAction(s string) (Action, error) {
	for a, n := range actionNames {
		if n == s {
			return Action(a), nil
		}
	}
	return 0, fmt.Errorf("policy: unknown action %q (want connect, discover or audit)", s)
}

// Proto is an IP protocol number, as in the packet's next-header field.
type Proto uint8

// The protocols a policy names.
const (
	ProtoTCP  Proto = 6
	ProtoUDP  Proto = 17
	ProtoICMP Proto = 58 // ICMPv6
)

// String returns the name a policy uses, "tcp", "udp" or "icmp"; other
// protocols are their decimal number, which no policy selector names.
func (p Proto) String() string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP:
		return "icmp"
	}
	return strconv.Itoa(int(p))
}

// ParseProto returns the protocol named s: tcp, udp or icmp.
func ParseProto(s string) (Proto, error) {
	switch s {
	case "tcp":
		return ProtoTCP, nil
	case "udp":
		return ProtoUDP, nil
	case "icmp":
		return ProtoICMP, nil
	}
	return 0, fmt.Errorf("policy: unknown protocol %q (want tcp, udp or icmp)", s)
}

// Request is one authorization question: may Principal do Action to
// Resource? For ActionConnect, Proto and Port say how (Port is the
// destination port; 0 for ICMP); other actions ignore them.
type Request struct {
	Principal Party
	Resource  Party
	Action    Action
	Proto     Proto
	Port      uint16
}

// Cedar entity types and the uid of each action.
const (
	typeAgent       = types.EntityType("Agent")
	typeTask        = types.EntityType("Task")
	typeGroup       = types.EntityType("Group")
	typeRole        = types.EntityType("Role")
	typeTrustDomain = types.EntityType("TrustDomain")
	typeAction      = types.EntityType("Action")
)

var actionUIDs = [numActions]types.EntityUID{
	ActionConnect:  types.NewEntityUID(typeAction, "connect"),
	ActionDiscover: types.NewEntityUID(typeAction, "discover"),
	ActionAudit:    types.NewEntityUID(typeAction, "audit"),
}

// schemaText is the Cedar schema every document is validated against:
// the entity mapping of Agent, Task, Request and the actions.
const schemaText = `
entity TrustDomain;
entity Group;
entity Role;
entity Agent in [Group, Role, TrustDomain] {
  spiffe_id: String,
  trust_domain: String,
  skills: Set<String>,
  tags: Set<String>,
};
entity Task in [Agent, Task] {
  class: String,
  sensitivity: String,
  depth: Long,
  pseudonym: String,
};
action connect appliesTo {
  principal: [Agent, Task],
  resource: [Agent, Task],
  context: { proto: String, port: Long },
};
action discover appliesTo { principal: [Agent, Task], resource: [Agent, Task], context: {} };
action audit appliesTo { principal: [Agent, Task], resource: [Agent, Task], context: {} };
`

func agentUID(a netip.Addr) types.EntityUID {
	return types.NewEntityUID(typeAgent, types.String(a.String()))
}
func taskUID(a netip.Addr) types.EntityUID {
	return types.NewEntityUID(typeTask, types.String(a.String()))
}

func stringSet(ss []string) types.Set {
	vs := make([]types.Value, len(ss))
	for i, s := range ss {
		vs[i] = types.String(s)
	}
	return types.NewSet(vs...)
}

// entity returns a's Cedar entity as the document of trust domain view
// sees it: Agent::"<addr>" in its groups, roles and trust domain, with
// attributes spiffe_id, trust_domain, skills and tags. Groups and roles are
// labels a trust domain's CA gives its own agents, so only an agent of view
// is in Group::"g" and Role::"r"; an agent of another domain td is in
// Group::"td/g" and Role::"td/r". Otherwise a partner's CA could put its
// agents in this domain's groups by naming them alike.
func (a *Agent) entity(view string) types.Entity {
	qual := ""
	if a.TrustDomain != view {
		qual = a.TrustDomain + "/"
	}
	parents := make([]types.EntityUID, 0, len(a.Groups)+len(a.Roles)+1)
	for _, g := range a.Groups {
		parents = append(parents, types.NewEntityUID(typeGroup, types.String(qual+g)))
	}
	for _, r := range a.Roles {
		parents = append(parents, types.NewEntityUID(typeRole, types.String(qual+r)))
	}
	if a.TrustDomain != "" {
		parents = append(parents, types.NewEntityUID(typeTrustDomain, types.String(a.TrustDomain)))
	}
	return types.Entity{
		UID:     agentUID(a.Addr),
		Parents: types.NewEntityUIDSet(parents...),
		Attributes: types.NewRecord(types.RecordMap{
			"spiffe_id":    types.String(a.ID),
			"trust_domain": types.String(a.TrustDomain),
			"skills":       stringSet(a.Skills),
			"tags":         stringSet(a.Tags),
		}),
	}
}

// entity returns t's Cedar entity: Task::"<addr>" in its owner agent and
// its ancestor tasks, with attributes class, sensitivity, depth and
// pseudonym. Listing every ancestor, not only the parent, gives the same
// answers to `in` (which is transitive) without needing their entities.
func (t *Task) entity() types.Entity {
	parents := make([]types.EntityUID, 0, len(t.Parents)+1)
	parents = append(parents, agentUID(t.Owner))
	for _, p := range t.Parents {
		parents = append(parents, taskUID(p))
	}
	return types.Entity{
		UID:     taskUID(t.Addr),
		Parents: types.NewEntityUIDSet(parents...),
		Attributes: types.NewRecord(types.RecordMap{
			"class":       types.String(t.Class),
			"sensitivity": types.String(t.Sensitivity),
			"depth":       types.Long(t.Depth),
			"pseudonym":   types.String(t.Pseudonym),
		}),
	}
}

// entities is the entity store of one request: both parties' agents and
// tasks, at most 2×(1+identity.MaxDelegationDepth) entities, searched
// linearly (cheaper than a map at this size).
type entities struct {
	list []types.Entity
}

var _ types.EntityGetter = (*entities)(nil)

func (s *entities) Get(uid types.EntityUID) (types.Entity, bool) {
	for i := range s.list {
		if s.list[i].UID == uid {
			return s.list[i], true
		}
	}
	return types.Entity{}, false
}

// add puts the party's entities in s, as the document of trust domain
// view sees them, from ec when it holds them (nil: build them), and
// returns the party's uid. The agent is added unless the
// party is a task whose Owner is another agent (a caller's mistake that
// must not lend the task that agent's groups).
func (s *entities) add(p *Party, view string, ec *entityCache) types.EntityUID {
	var uid types.EntityUID
	if !p.IsTask() || p.Tasks[0].Owner == p.Agent.Addr {
		foreign := p.Agent.TrustDomain != view
		e := ec.entity(entKey{addr: p.Agent.Addr, foreign: foreign}, func() types.Entity { return p.Agent.entity(view) })
		s.put(e)
		uid = e.UID
	}
	for i := range p.Tasks {
		e := ec.entity(entKey{addr: p.Tasks[i].Addr, task: true}, p.Tasks[i].entity)
		s.put(e)
		if i == 0 {
			uid = e.UID
		}
	}
	return uid
}

func (s *entities) put(e types.Entity) {
	if _, ok := s.Get(e.UID); !ok {
		s.list = append(s.list, e)
	}
}

// context returns the Cedar context of r: {proto, port} for connect,
// empty otherwise.
func (r *Request) context() types.Record {
	if r.Action != ActionConnect {
		return types.Record{}
	}
	k := uint32(r.Proto)<<16 | uint32(r.Port)
	slot := &contexts[(k*2654435761)>>(32-contextSlotsLog2)]
	if c := slot.Load(); c != nil && c.key == k {
		return c.rec
	}
	rec := types.NewRecord(types.RecordMap{
		"proto": types.String(r.Proto.String()),
		"port":  types.Long(r.Port),
	})
	slot.Store(&contextSlot{key: k, rec: rec})
	return rec
}

// contexts caches connect contexts by protocol and port: building the
// record (a map) was a tenth of a decision's cost. Records are immutable,
// so sharing them is safe; a slot holds the last (proto, port) hashed to it.
const contextSlotsLog2 = 10

var contexts [1 << contextSlotsLog2]atomic.Pointer[contextSlot]

type contextSlot struct {
	key uint32
	rec types.Record
}

// entKey names an agent's or a task's entity in an entityCache. An
// agent's entity differs as seen from its own domain or another's.
type entKey struct {
	addr    netip.Addr
	task    bool
	foreign bool
}

// entityCache keeps the Cedar entities built at one generation, so that a
// decision-cache miss for a known party (a new port, a new peer of a known
// agent) does not rebuild them. It lives under the same contract as the
// decision cache: the caller calls Engine.Invalidate when what it knows of
// a party changes, and a new generation starts an empty cache. Bounded:
// when full it starts over.
type entityCache struct {
	gen uint64
	max int
	mu  sync.RWMutex
	m   map[entKey]types.Entity
}

func newEntityCache(gen uint64, max int) *entityCache {
	return &entityCache{gen: gen, max: max, m: make(map[entKey]types.Entity)}
}

// entity returns the cached entity of k, or builds it; a nil cache builds.
func (c *entityCache) entity(k entKey, build func() types.Entity) types.Entity {
	if c == nil {
		return build()
	}
	c.mu.RLock()
	e, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return e
	}
	e = build()
	c.mu.Lock()
	if len(c.m) >= c.max {
		clear(c.m)
	}
	c.m[k] = e
	c.mu.Unlock()
	return e
}
