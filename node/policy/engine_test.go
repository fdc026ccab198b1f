package policy

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
)

// TestDefault: without documents, allow inside a trust domain, deny across
// and deny what has no trust domain, with the rule names node.DefaultPolicy
// has always used.
func TestDefault(t *testing.T) {
	e := New(Config{})
	cases := []struct {
		from, to Agent
		allow    bool
		reason   Reason
		rule     string
	}{
		{planner, search, true, ReasonDefault, RuleDefaultSameDomain},
		{planner, quotes, false, ReasonNoPolicy, RuleDefaultCrossDomain},
		{quotes, planner, false, ReasonNoPolicy, RuleDefaultCrossDomain},
		{nobody, planner, false, ReasonUnknownDomain, "unknown-domain"},
		{planner, nobody, false, ReasonUnknownDomain, "unknown-domain"},
	}
	for _, c := range cases {
		for _, r := range []*Request{
			connect(AgentParty(c.from), AgentParty(c.to), ProtoTCP, 443),
			{Principal: AgentParty(c.from), Resource: AgentParty(c.to), Action: ActionDiscover},
		} {
			d := e.Decide(r)
			if d.Allow != c.allow || d.Reason != c.reason || d.Rule() != c.rule {
				t.Errorf("%s → %s %s: allow=%v reason=%s rule=%s, want %v %s %s", c.from.ID, c.to.ID, r.Action, d.Allow, d.Reason, d.Rule(), c.allow, c.reason, c.rule)
			}
		}
	}
	if s := e.Decide(connect(AgentParty(planner), AgentParty(quotes), ProtoTCP, 1)).Summary(); !strings.Contains(s, "no rule allows crossing from example.org to partner.example") {
		t.Errorf("summary %q", s)
	}
}

// TestBothDomainsMustAllow: across trust domains the sender's domain must
// permit outbound and the receiver's inbound; a domain without a document
// denies across, so one document alone opens nothing.
func TestBothDomainsMustAllow(t *testing.T) {
	out := mustCompile(t, "example.org", 1, `@id("out") permit (principal in Group::"planners", action, resource in TrustDomain::"partner.example");
@id("home") permit (principal in TrustDomain::"example.org", action, resource in TrustDomain::"example.org");`, nil)
	in := mustCompile(t, "partner.example", 1, `@id("in") permit (principal in TrustDomain::"example.org", action == Action::"connect", resource) when { context.port == 443 };`, nil)
	from, to := AgentParty(planner), AgentParty(quotes)
	for _, c := range []struct {
		docs   []*Document
		port   uint16
		allow  bool
		reason Reason
		rule   string
	}{
		{[]*Document{out}, 443, false, ReasonNoPolicy, RuleDefaultCrossDomain},
		{[]*Document{in}, 443, false, ReasonNoPolicy, RuleDefaultCrossDomain},
		{[]*Document{out, in}, 443, true, ReasonPolicy, "example.org/out"},
		{[]*Document{out, in}, 80, false, ReasonPolicyDenied, "partner.example/none"},
	} {
		e := engineWith(t, c.docs...)
		d := e.Decide(connect(from, to, ProtoTCP, c.port))
		if d.Allow != c.allow || d.Reason != c.reason || d.Rule() != c.rule {
			t.Errorf("%d documents, port %d: allow=%v reason=%s rule=%s (%s), want %v %s %s", len(c.docs), c.port, d.Allow, d.Reason, d.Rule(), d.Summary(), c.allow, c.reason, c.rule)
		}
	}
	// A document governs its own domain: inside example.org only "home"
	// applies, and a planner may not reach a tool it does not permit.
	e := engineWith(t, out, in)
	if d := e.Decide(connect(AgentParty(search), AgentParty(crm), ProtoTCP, 1)); !d.Allow || d.Out.Domain != d.In.Domain || d.Rule() != "example.org/home" {
		t.Errorf("inside example.org: %+v", d)
	}
	if d := e.Decide(connect(to, from, ProtoTCP, 443)); d.Allow {
		t.Errorf("the partner reaches in though example.org permits nothing inbound from it: %s", d.Summary())
	}
}

// TestCacheAndGeneration: a second identical request is a cache hit; a
// new document or an Invalidate makes the next one a miss and the answer
// follows the new facts.
func TestCacheAndGeneration(t *testing.T) {
	e := New(Config{})
	from, to := AgentParty(planner), AgentParty(search)
	r := connect(from, to, ProtoTCP, 443)
	e.Decide(r)
	e.Decide(r)
	if st := e.Stats(); st.CacheHits != 1 || st.CacheMisses != 1 || st.CacheEntries != 1 {
		t.Fatalf("stats %+v", st)
	}
	if d := e.Decide(connect(from, to, ProtoTCP, 444)); !d.Allow || e.Stats().CacheMisses != 2 {
		t.Errorf("another port is another key")
	}
	deny := mustCompile(t, "example.org", 1, `@id("only-dlp") permit (principal, action, resource in Group::"dlp");`, nil)
	if err := e.Install(deny); err != nil {
		t.Fatal(err)
	}
	if d := e.Decide(r); d.Allow || d.Reason != ReasonPolicyDenied || d.Generation != e.Generation() {
		t.Errorf("after a new document: %+v", d)
	}
	// Membership changes what it knows of search: it joins group dlp. The
	// cached denial must not survive Invalidate.
	search2 := search
	search2.Groups = []string{"dlp", "tools"}
	r2 := connect(from, AgentParty(search2), ProtoTCP, 443)
	if d := e.Decide(r2); d.Allow {
		t.Error("the stale decision was recomputed without Invalidate; the cache key is the address")
	}
	e.Invalidate()
	if d := e.Decide(r2); !d.Allow || d.Rule() != "example.org/only-dlp" {
		t.Errorf("after Invalidate: %s", d.Summary())
	}
}

func TestCacheBounded(t *testing.T) {
	e := New(Config{CacheSize: 64})
	from := AgentParty(planner)
	for port := range uint16(1000) {
		e.Decide(connect(from, AgentParty(search), ProtoTCP, port+1))
	}
	if n := e.Stats().CacheEntries; n > 64 || n < 32 {
		t.Errorf("%d entries in a cache of 64", n)
	}
}

func TestDecideConcurrent(t *testing.T) {
	ca := testCA(t, "example.org")
	e := New(Config{Bundle: bundleOf(t, ca)})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				e.Decide(connect(AgentParty(planner), AgentParty(search), ProtoTCP, uint16(w*10000+i%50+1)))
				if i%500 == 0 {
					e.Invalidate()
				}
			}
		})
	}
	for serial := uint64(1); serial <= 5; serial++ {
		if _, err := e.Apply(mustSign(t, ca, serial, allowTools, nil)); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if d := e.Decide(connect(AgentParty(planner), AgentParty(search), ProtoTCP, 9)); !d.Allow || d.Out.Serial != 5 {
		t.Errorf("final decision %+v", d)
	}
}

func TestExplain(t *testing.T) {
	home := mustCompile(t, "example.org", 3, `
@id("planners-out") @rate("5") @via("group:dlp")
permit (principal in Group::"planners", action == Action::"connect", resource in TrustDomain::"partner.example");
@id("all-out") @log("detail")
permit (principal, action == Action::"connect", resource in TrustDomain::"partner.example");
@id("tools-home")
permit (principal, action, resource in Group::"tools");
@id("no-ssh")
forbid (principal, action == Action::"connect", resource) when { context.port == 22 };
`, nil)
	away := mustCompile(t, "partner.example", 9, `@id("in") permit (principal in TrustDomain::"example.org", action, resource);`, nil)
	e := engineWith(t, home, away)
	ex := e.Explain(connect(AgentParty(planner), AgentParty(quotes), ProtoTCP, 443))
	if !ex.Decision.Allow || len(ex.Sides) != 2 {
		t.Fatalf("explanation %+v", ex)
	}
	out := ex.Sides[0]
	if out.Direction != "outbound" || out.Total != 4 || out.Candidates != 3 || len(out.Matched) != 2 || out.Matched[0].ID != "planners-out" {
		t.Errorf("outbound side %+v", out)
	}
	var b bytes.Buffer
	ex.WriteText(&b)
	for _, want := range []string{
		"allow: allowed by example.org serial 3: planners-out, all-out and partner.example serial 9: in (policy)",
		"outbound, trust domain example.org: allow by planners-out, all-out (serial 3)",
		"3 of 4 policies evaluated",
		`matched permit "planners-out" at 2:1 @rate("5") @via("group:dlp")`,
		"inbound, trust domain partner.example: allow by in (serial 9)",
		`obligations @rate("5") @log("detail") @via("group:dlp")`,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("explanation lacks %q:\n%s", want, b.String())
		}
	}
	ex = e.Explain(connect(AgentParty(planner), AgentParty(quotes), ProtoTCP, 22))
	b.Reset()
	ex.WriteText(&b)
	if ex.Decision.Allow || !strings.Contains(b.String(), `deny: forbidden by example.org serial 3: no-ssh (outbound) (policy_denied)`) ||
		!strings.Contains(b.String(), `matched forbid "no-ssh"`) || !strings.Contains(b.String(), `matched permit "planners-out"`) {
		t.Errorf("port 22:\n%s", b.String())
	}
	// Inside a domain there is one side.
	ex = e.Explain(connect(AgentParty(planner), AgentParty(search), ProtoTCP, 443))
	if len(ex.Sides) != 1 || ex.Sides[0].Direction != "outbound and inbound" || !slices.Equal(ex.Decision.Out.Policies, []string{"tools-home"}) {
		t.Errorf("inside: %+v", ex.Sides)
	}
	// A scope refusal still shows what the policies would say.
	task := taskOf(planner, "t", "c", "", "group:tools")
	ex = e.Explain(connect(TaskParty(planner, task), AgentParty(quotes), ProtoTCP, 443))
	if ex.Reason != "scope" || len(ex.Sides) != 2 || !ex.Sides[0].Verdict.Allow || len(ex.Scope) != 1 {
		t.Errorf("scope: %+v", ex)
	}
}

func TestDecisionJSON(t *testing.T) {
	d := New(Config{}).Decide(connect(AgentParty(planner), AgentParty(quotes), ProtoTCP, 443))
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	ob, _ := json.Marshal(Obligations{Log: LogDetail, Via: []Selector{{Kind: SelectRole, Value: "waypoint"}}, Rate: 2})
	if string(ob) != `{"rate":2,"log":"detail","via":["role:waypoint"]}` {
		t.Errorf("obligations as JSON: %s", ob)
	}
	for _, want := range []string{`"allow":false`, `"reason":"no_policy"`, `"rule":"default:cross-trust-domain"`, `"summary":"no rule allows crossing`, `"out":{"domain":"example.org"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %s", b, want)
		}
	}
}
