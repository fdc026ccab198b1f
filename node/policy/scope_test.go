package policy

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

func TestParseSelector(t *testing.T) {
	good := map[string]Selector{
		"*":                           {Kind: SelectAny},
		"group:tools":                 {Kind: SelectGroup, Value: "tools"},
		"role:waypoint":               {Kind: SelectRole, Value: "waypoint"},
		"skill:web-search tcp/443":    {Kind: SelectSkill, Value: "web-search", Proto: ProtoTCP, PortLo: 443, PortHi: 443},
		"tag:web udp/5000-5010":       {Kind: SelectTag, Value: "web", Proto: ProtoUDP, PortLo: 5000, PortHi: 5010},
		"domain:partner.example icmp": {Kind: SelectDomain, Value: "partner.example", Proto: ProtoICMP},
		"spiffe://partner.example/agent/quotes tcp": {Kind: SelectID, Value: "spiffe://partner.example/agent/quotes", Proto: ProtoTCP},
		search.Addr.String():                        {Kind: SelectAddr, Addr: search.Addr},
	}
	for s, want := range good {
		got, err := ParseSelector(s)
		if err != nil {
			t.Errorf("ParseSelector(%q): %v", s, err)
			continue
		}
		if got != want {
			t.Errorf("ParseSelector(%q) = %+v, want %+v", s, got, want)
		}
		if got.String() != s {
			t.Errorf("%q prints as %q", s, got.String())
		}
	}
	bad := []string{
		"", "group:", "group:a b", "group:a,b", "tools", "::1", "2001:db8::1", "fe80::1%eth0",
		"spiffe://", "spiffe://Example.org/x", "domain:spiffe://x", "domain:", "skill:x tcp/0",
		"skill:x tcp/65536", "skill:x tcp/443-80", "skill:x icmp/1", "skill:x sctp", "skill:x tcp/08",
		"skill:x tcp/1-2-3", strings.Repeat("a", MaxSelectorLen+1),
	}
	for _, s := range bad {
		if sel, err := ParseSelector(s); err == nil {
			t.Errorf("ParseSelector(%q) = %+v, want an error", s, sel)
		}
	}
}

func TestScopeAllows(t *testing.T) {
	tools, partner := AgentParty(search), AgentParty(quotes)
	task := taskOf(crm, "t", "x", "")
	crmTask := TaskParty(crm, task)
	cases := []struct {
		scope []string
		res   Party
		act   Action
		proto Proto
		port  uint16
		want  bool
	}{
		{nil, partner, ActionConnect, ProtoTCP, 1, true},
		{[]string{"group:tools tcp/443"}, tools, ActionConnect, ProtoTCP, 443, true},
		{[]string{"group:tools tcp/443"}, tools, ActionConnect, ProtoTCP, 80, false},
		{[]string{"group:tools tcp/443"}, tools, ActionConnect, ProtoUDP, 443, false},
		{[]string{"group:tools tcp/443"}, tools, ActionDiscover, 0, 0, true}, // discover what you may reach
		{[]string{"group:tools tcp/443"}, partner, ActionDiscover, 0, 0, false},
		{[]string{"skill:web-search"}, tools, ActionConnect, ProtoUDP, 53, true},
		{[]string{"tag:web"}, tools, ActionConnect, ProtoTCP, 1, true},
		{[]string{"group:public"}, partner, ActionConnect, ProtoTCP, 1, false}, // another domain's group
		{[]string{"group:partner.example/public"}, partner, ActionConnect, ProtoTCP, 1, true},
		{[]string{"group:example.org/tools"}, tools, ActionConnect, ProtoTCP, 1, false}, // a home group is named bare
		{[]string{"domain:partner.example tcp/400-500"}, partner, ActionConnect, ProtoTCP, 443, true},
		{[]string{"domain:partner.example tcp/400-500"}, partner, ActionConnect, ProtoTCP, 501, false},
		{[]string{"spiffe://partner.example/agent/quotes"}, partner, ActionConnect, ProtoICMP, 0, true},
		{[]string{crm.Addr.String()}, crmTask, ActionConnect, ProtoTCP, 1, true}, // an agent's address covers its tasks
		{[]string{task.Addr.String()}, crmTask, ActionConnect, ProtoTCP, 1, true},
		{[]string{task.Addr.String()}, AgentParty(crm), ActionConnect, ProtoTCP, 1, false},
		{[]string{"group:nope", "*"}, partner, ActionConnect, ProtoTCP, 1, true},
		{[]string{"role:waypoint"}, AgentParty(dlp), ActionConnect, ProtoTCP, 1, true},
		{[]string{"domain:example.org"}, AgentParty(nobody), ActionConnect, ProtoTCP, 1, false},
	}
	for _, c := range cases {
		s := MustParseScope(c.scope...)
		if got := s.Allows(&c.res, "example.org", c.act, c.proto, c.port); got != c.want {
			t.Errorf("scope %q allows %s %s %s/%d = %v, want %v", c.scope, c.res.String(), c.act, c.proto, c.port, got, c.want)
		}
	}
	if _, err := ParseScope(slices.Repeat([]string{"*"}, MaxSelectors+1)); err == nil {
		t.Error("a scope of too many selectors parsed")
	}
}

// TestScopeNarrowsDecision: a task reaches only its scope, and a sub-agent
// is bound by its parent's scope as well as its own.
func TestScopeNarrowsDecision(t *testing.T) {
	e := New(Config{}) // default: allow inside example.org
	parent := taskOf(planner, "t1", "research", "", "group:tools tcp/443")
	sub := subTask(parent, "t2", "*")
	for _, c := range []struct {
		from Party
		to   Agent
		port uint16
		want bool
	}{
		{TaskParty(planner, parent), search, 443, true},
		{TaskParty(planner, parent), search, 80, false},
		{TaskParty(planner, parent), dlp, 443, false},
		{TaskParty(planner, sub, parent), search, 443, true},
		{TaskParty(planner, sub, parent), dlp, 443, false}, // "*" does not widen the parent's scope
	} {
		d := e.Decide(connect(c.from, AgentParty(c.to), ProtoTCP, c.port))
		if d.Allow != c.want {
			t.Errorf("%s → %s:%d: allow=%v, want %v (%s)", c.from.String(), c.to.ID, c.port, d.Allow, c.want, d.Summary())
		}
		if !c.want && d.Reason != ReasonScope {
			t.Errorf("%s → %s:%d: reason %s, want scope", c.from.String(), c.to.ID, c.port, d.Reason)
		}
	}
	d := e.Decide(connect(TaskParty(planner, sub, parent), AgentParty(dlp), ProtoTCP, 443))
	if d.ScopeTask != parent.Addr {
		t.Errorf("scope refusal names %s, want the parent %s", d.ScopeTask, parent.Addr)
	}
}

func TestParseVia(t *testing.T) {
	got, err := ParseVia("group:dlp, role:waypoint ,spiffe://partner.example/agent/gw")
	if err != nil {
		t.Fatal(err)
	}
	want := []Selector{{Kind: SelectGroup, Value: "dlp"}, {Kind: SelectRole, Value: "waypoint"}, {Kind: SelectID, Value: "spiffe://partner.example/agent/gw"}}
	if !slices.Equal(got, want) {
		t.Errorf("ParseVia = %+v, want %+v", got, want)
	}
	for _, bad := range []string{"", "group:dlp,", "skill:x", "*", "group:dlp tcp/443", search.Addr.String(), "domain:x.org"} {
		if v, err := ParseVia(bad); err == nil {
			t.Errorf("ParseVia(%q) = %v, want an error", bad, v)
		}
	}
}

func TestScopeJSON(t *testing.T) {
	s := MustParseScope("group:tools tcp/443", "*")
	b, err := json.Marshal(s)
	if err != nil || string(b) != `["group:tools tcp/443","*"]` {
		t.Fatalf("%s %v", b, err)
	}
	var back Scope
	if err := json.Unmarshal(b, &back); err != nil || !slices.Equal(back.Selectors(), s.Selectors()) {
		t.Errorf("round trip: %v", err)
	}
	if err := json.Unmarshal([]byte(`["group:"]`), &back); err == nil {
		t.Error("a bad selector unmarshalled")
	}
}
