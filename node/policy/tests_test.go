package policy

import (
	"errors"
	"strings"
	"testing"
)

const testsYAML = `
agents:
  planner: {groups: [planners]}
  search: {groups: [tools], skills: [web-search]}
  quotes: {id: "spiffe://partner.example/agent/quotes"}
tasks:
  support: {owner: planner, class: customer-support, sensitivity: pii}
  helper: {parent: support, scope: ["group:tools tcp/443"]}
tests:
  - name: planner calls search
    from: planner
    to: search
    port: 443
    expect: allow
    expect_policy: tools
  - {name: planner calls partner via dlp, from: planner, to: quotes, port: 443, expect: allow, expect_via: "group:dlp"}
  - {name: partner calls in, from: quotes, to: search, port: 443, expect: deny, expect_reason: policy_denied}
  - {name: pii task stays home, from: support, to: quotes, port: 443, expect: deny}
  - {name: helper is scoped, from: helper, to: search, port: 80, expect: deny, expect_reason: scope}
  - {name: helper reaches search, from: helper, to: search, port: 443, expect: allow}
  - {name: discover, from: planner, to: search, action: discover, expect: allow}
`

const testsPolicy = `
@id("tools") permit (principal in Group::"planners", action, resource in Group::"tools");
@id("partner") @via("group:dlp") permit (principal in Group::"planners", action == Action::"connect", resource in TrustDomain::"partner.example");
@id("pii-home") forbid (principal is Task, action, resource) when { principal.sensitivity == "pii" } unless { resource in TrustDomain::"example.org" };
`

func TestRunTests(t *testing.T) {
	tests, err := ParseTests([]byte(testsYAML))
	if err != nil {
		t.Fatal(err)
	}
	d := mustCompile(t, "example.org", 1, testsPolicy, tests)
	rep := RunTests(d)
	if len(rep.Results) != 7 {
		t.Fatalf("%d results", len(rep.Results))
	}
	for _, r := range rep.Results {
		if !r.Pass {
			t.Errorf("%s: %s", r.Name, r.Problem)
		}
	}
	// The partner's side is not this document's to judge: the outbound
	// side of "partner calls in" is left allowed, the inbound decides.
	if r := rep.Results[2]; r.Decision.Out.Allow != true || r.Decision.In.Allow {
		t.Errorf("partner calls in: %+v", r.Decision)
	}
	// Each kind of expectation can fail.
	for _, c := range []struct{ edit, want string }{
		{"expect_policy: tools", `expected policy "partner" to decide`},
		{`expect_via: "group:dlp"`, `expected @via("role:waypoint")`},
		{"expect_reason: policy_denied", "expected reason no_policy"},
		{"{name: discover, from: planner, to: search, action: discover, expect: allow}", "expected deny, got allow"},
	} {
		var y string
		switch c.want {
		case `expected policy "partner" to decide`:
			y = strings.Replace(testsYAML, c.edit, "expect_policy: partner", 1)
		case `expected @via("role:waypoint")`:
			y = strings.Replace(testsYAML, c.edit, `expect_via: "role:waypoint"`, 1)
		case "expected reason no_policy":
			y = strings.Replace(testsYAML, c.edit, "expect_reason: no_policy", 1)
		default:
			y = strings.Replace(testsYAML, c.edit, "{name: discover, from: planner, to: search, action: discover, expect: deny}", 1)
		}
		tests, err := ParseTests([]byte(y))
		if err != nil {
			t.Fatal(err)
		}
		err = RunTests(mustCompile(t, "example.org", 1, testsPolicy, tests)).Err()
		if !errors.Is(err, ErrTestsFailed) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want %q", c.edit, err, c.want)
		}
	}
}

func TestSubTaskFixture(t *testing.T) {
	tests, err := ParseTests([]byte(testsYAML))
	if err != nil {
		t.Fatal(err)
	}
	f, err := tests.resolve("example.org")
	if err != nil {
		t.Fatal(err)
	}
	h := f.parties["helper"]
	if len(h.Tasks) != 2 || h.Tasks[0].Depth != 2 || h.Tasks[0].Parents[0] != h.Tasks[1].Addr ||
		h.Tasks[0].Owner != FixtureAddr("planner") || h.Agent.ID != "spiffe://example.org/agent/planner" || h.Tasks[0].Addr != FixtureAddr("helper") {
		t.Errorf("helper %+v", h)
	}
	if q := f.parties["quotes"]; q.Agent.TrustDomain != "partner.example" {
		t.Errorf("quotes %+v", q)
	}
}

func TestBadTests(t *testing.T) {
	cases := map[string]string{
		"tests:\n  - {name: x, from: a, to: b, expect: allow, colour: red}\n": "colour",
		"agents:\n  a: {group: [x]}\n":                                        "line 2",
		"tests: [1, 2":                                                        "yaml",
	}
	for y, want := range cases {
		if _, err := ParseTests([]byte(y)); !errors.Is(err, ErrTests) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err %v, want ErrTests mentioning %q", y, err, want)
		}
	}
	bad := map[string]string{
		"tests:\n  - {name: x, from: nope, to: a, port: 1, expect: allow}\nagents: {a: {}}":                                                     `from "nope"`,
		"tests:\n  - {name: x, from: a, to: a, port: 1, expect: maybe}\nagents: {a: {}}":                                                        `expect "maybe"`,
		"tests:\n  - {name: x, from: a, to: a, expect: allow}\nagents: {a: {}}":                                                                 "port 0",
		"tests:\n  - {name: x, from: a, to: a, proto: icmp, port: 3, expect: allow}\nagents: {a: {}}":                                           "icmp has no port",
		"tests:\n  - {name: x, from: a, to: a, action: discover, port: 3, expect: allow}\nagents: {a: {}}":                                      "belong to connect",
		"tests:\n  - {name: x, from: a, to: a, port: 1, expect: allow}\n  - {name: x, from: a, to: a, port: 1, expect: allow}\nagents: {a: {}}": "used twice",
		"tests:\n  - {from: a, to: a, port: 1, expect: allow}\nagents: {a: {}}":                                                                 "name is required",
		"tests:\n  - {name: x, from: a, to: a, port: 1, expect: allow, expect_reason: nope}\nagents: {a: {}}":                                   "not a reason code",
		"tests:\n  - {name: x, from: p, to: p, port: 1, expect: allow}\nagents: {p: {id: 'spiffe://o.example/agent/p'}}":                        "neither",
		"agents: {a: {id: 'spiffe://x.example/svc/a'}}":                                                                                         "not spiffe://",
		"agents: {'a b': {}}":                                        "give an id",
		"agents: {a: {addr: '2001:db8::1'}}":                         "not an overlay address",
		"agents: {a: {}}\ntasks: {t: {owner: b}}":                    `owner "b"`,
		"agents: {a: {}}\ntasks: {t: {parent: u}, u: {parent: t}}":   "deeper",
		"agents: {a: {}}\ntasks: {a: {owner: a}}":                    "names an agent too",
		"agents: {a: {}}\ntasks: {t: {owner: a, scope: ['group:']}}": "scope",
	}
	for y, want := range bad {
		tests, err := ParseTests([]byte(y))
		if err != nil {
			t.Errorf("%q: %v", y, err)
			continue
		}
		_, err = Compile(&Document{TrustDomain: "example.org", Serial: 1, Policy: allowTools, Tests: tests})
		if !errors.Is(err, ErrTests) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err %v, want ErrTests mentioning %q", y, err, want)
		}
	}
}
