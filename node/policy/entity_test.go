package policy

import (
	"slices"
	"strings"
	"testing"

	cedar "github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"
)

func TestAgentEntity(t *testing.T) {
	e := search.entity("example.org")
	if want := types.NewEntityUID("Agent", types.String(search.Addr.String())); e.UID != want {
		t.Errorf("uid %v, want %v", e.UID, want)
	}
	var parents []string
	for p := range e.Parents.All() {
		parents = append(parents, p.String())
	}
	slices.Sort(parents)
	want := []string{`Group::"tools"`, `TrustDomain::"example.org"`}
	if !slices.Equal(parents, want) {
		t.Errorf("parents %v, want %v", parents, want)
	}
	for attr, want := range map[string]types.Value{
		"spiffe_id":    types.String(search.ID),
		"trust_domain": types.String("example.org"),
		"skills":       types.NewSet(types.String("web-search")),
		"tags":         types.NewSet(types.String("web")),
	} {
		got, ok := e.Attributes.Get(types.String(attr))
		if !ok || !got.Equal(want) {
			t.Errorf("attribute %s = %v, want %v", attr, got, want)
		}
	}
	if r := dlp.entity("example.org"); !r.Parents.Contains(types.NewEntityUID("Role", "waypoint")) {
		t.Errorf("dlp's parents %v lack Role::\"waypoint\"", r.Parents)
	}
}

func TestTaskEntity(t *testing.T) {
	parent := taskOf(planner, "t1", "research", "low")
	sub := subTask(parent, "t2")
	e := sub.entity()
	for _, p := range []types.EntityUID{agentUID(planner.Addr), taskUID(parent.Addr)} {
		if !e.Parents.Contains(p) {
			t.Errorf("sub-agent's parents %v lack %v", e.Parents, p)
		}
	}
	for attr, want := range map[string]types.Value{
		"class": types.String("research"), "sensitivity": types.String("low"),
		"depth": types.Long(2), "pseudonym": types.String("p-t2"),
	} {
		got, ok := e.Attributes.Get(types.String(attr))
		if !ok || !got.Equal(want) {
			t.Errorf("attribute %s = %v, want %v", attr, got, want)
		}
	}
}

// TestEntityMapping evaluates policies over the mapping: a task is `in`
// its owner, its owner's groups and trust domain, and its parent task;
// connect's context carries proto and port.
func TestEntityMapping(t *testing.T) {
	parent := taskOf(planner, "t1", "research", "pii")
	sub := subTask(parent, "t2")
	from := TaskParty(planner, sub, parent)
	to := AgentParty(search)
	cases := []struct {
		policy string
		req    *Request
		allow  bool
	}{
		{`permit (principal in Group::"planners", action, resource);`, connect(from, to, ProtoTCP, 443), true},
		{`permit (principal in TrustDomain::"example.org", action, resource in TrustDomain::"example.org");`, connect(from, to, ProtoTCP, 443), true},
		{`permit (principal in Agent::"` + planner.Addr.String() + `", action, resource);`, connect(from, to, ProtoTCP, 443), true},
		{`permit (principal in Task::"` + parent.Addr.String() + `", action, resource);`, connect(from, to, ProtoTCP, 443), true},
		{`permit (principal == Task::"` + parent.Addr.String() + `", action, resource);`, connect(from, to, ProtoTCP, 443), false},
		{`permit (principal is Task, action, resource) when { principal.depth == 2 && principal.sensitivity == "pii" };`, connect(from, to, ProtoTCP, 443), true},
		{`permit (principal, action == Action::"connect", resource) when { context.proto == "udp" && context.port == 53 };`, connect(from, to, ProtoUDP, 53), true},
		{`permit (principal, action == Action::"connect", resource) when { context.proto == "udp" && context.port == 53 };`, connect(from, to, ProtoTCP, 53), false},
		{`permit (principal, action == Action::"connect", resource is Agent) when { resource.skills.contains("web-search") && resource.spiffe_id like "*/agent/search" };`, connect(from, to, ProtoTCP, 1), true},
		{`permit (principal, action == Action::"discover", resource);`, &Request{Principal: from, Resource: to, Action: ActionDiscover}, true},
		{`permit (principal, action == Action::"discover", resource);`, connect(from, to, ProtoICMP, 0), false},
		{`permit (principal in Group::"tools", action, resource);`, connect(from, to, ProtoTCP, 443), false},
	}
	for _, c := range cases {
		d := mustCompile(t, "example.org", 1, c.policy, nil)
		got := engineWith(t, d).Decide(c.req)
		if got.Allow != c.allow {
			t.Errorf("%s\n%s: allow=%v, want %v (%s)", c.policy, c.req.Action, got.Allow, c.allow, got.Summary())
		}
	}
}

func TestCedarRequestContext(t *testing.T) {
	r := connect(AgentParty(planner), AgentParty(search), ProtoTCP, 8443)
	ev := evaluator{r: r}
	ev.build("example.org")
	cr := ev.creq
	if cr.Principal != agentUID(planner.Addr) || cr.Resource != agentUID(search.Addr) {
		t.Errorf("principal %v resource %v", cr.Principal, cr.Resource)
	}
	if cr.Action != types.NewEntityUID("Action", "connect") {
		t.Errorf("action %v", cr.Action)
	}
	if p, _ := cr.Context.Get("proto"); p != types.String("tcp") {
		t.Errorf("proto %v", p)
	}
	if p, _ := cr.Context.Get("port"); p != types.Long(8443) {
		t.Errorf("port %v", p)
	}
	r.Action = ActionDiscover
	if n := r.context().Len(); n != 0 {
		t.Errorf("discover has %d context attributes, want none", n)
	}
}

// TestSchemaMatchesMapping checks that entities built from the Go types
// validate against the schema the documents are checked with.
func TestSchemaMatchesMapping(t *testing.T) {
	parent := taskOf(planner, "t1", "research", "pii")
	// A policy touching every attribute validates...
	text := `permit (principal is Task, action == Action::"connect", resource is Agent) when {
  principal.class == "research" && principal.sensitivity == "pii" && principal.depth == 1 && principal.pseudonym != "" &&
  resource.spiffe_id != "" && resource.trust_domain == "example.org" && resource.skills.contains("web-search") && resource.tags.contains("web") &&
  context.proto == "tcp" && context.port == 443 };`
	d := mustCompile(t, "example.org", 1, text, nil)
	// ...and, over the Go mapping, matches.
	got := engineWith(t, d).Decide(connect(TaskParty(planner, parent), AgentParty(search), ProtoTCP, 443))
	if !got.Allow {
		t.Fatalf("every attribute policy denied: %s", got.Summary())
	}
	_ = cedar.Allow
	if !strings.Contains(schemaText, "entity Task in [Agent, Task]") {
		t.Error("schema lost the task hierarchy")
	}
}

// TestForeignLabelsQualified: a domain's document sees another domain's
// groups and roles under that domain's name, so that a partner's CA cannot
// put its agents in this domain's groups by naming them alike.
func TestForeignLabelsQualified(t *testing.T) {
	e := search.entity("partner.example")
	for _, want := range []types.EntityUID{
		types.NewEntityUID("Group", "example.org/tools"),
		types.NewEntityUID("TrustDomain", "example.org"),
	} {
		if !e.Parents.Contains(want) {
			t.Errorf("seen from partner.example, search's parents %v lack %v", e.Parents, want)
		}
	}
	if e.Parents.Contains(types.NewEntityUID("Group", "tools")) {
		t.Error("seen from partner.example, search is in Group::\"tools\"")
	}
	// example.org's agents are planners at home; partner.example grants
	// its own "planners" group, and example.org's planners by name.
	home := mustCompile(t, "example.org", 1, `permit (principal, action, resource);`, nil)
	spoof := mustCompile(t, "partner.example", 1, `permit (principal in Group::"planners", action, resource);`, nil)
	if d := engineWith(t, home, spoof).Decide(connect(AgentParty(planner), AgentParty(quotes), ProtoTCP, 443)); d.Allow {
		t.Errorf("example.org's group planners matched partner.example's Group::\"planners\": %s", d.Summary())
	}
	named := mustCompile(t, "partner.example", 1, `permit (principal in Group::"example.org/planners", action, resource);`, nil)
	if d := engineWith(t, home, named).Decide(connect(AgentParty(planner), AgentParty(quotes), ProtoTCP, 443)); !d.Allow {
		t.Errorf("Group::\"example.org/planners\" did not match: %s", d.Summary())
	}
	// The same holds for a task's scope, read from its agent's domain.
	task := taskOf(planner, "t", "c", "", "group:public")
	if d := engineWith(t, home, named).Decide(connect(TaskParty(planner, task), AgentParty(quotes), ProtoTCP, 443)); d.Allow || d.Reason != ReasonScope {
		t.Errorf("scope group:public matched partner.example's public group: %s", d.Summary())
	}
	task.Scope = MustParseScope("group:partner.example/public")
	if d := engineWith(t, home, named).Decide(connect(TaskParty(planner, task), AgentParty(quotes), ProtoTCP, 443)); !d.Allow {
		t.Errorf("scope group:partner.example/public: %s", d.Summary())
	}
}
