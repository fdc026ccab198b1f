package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"

	"github.com/agent6/agent6/identity"
)

// Tests is a document's tests section: named requests and the decision
// the document must give each (as Tailscale policy files carry ACL tests),
// with the agents and tasks they name. A document whose tests fail is not
// signed, and a node refuses one that arrives.
//
// Its file form is YAML (or JSON):
//
//	agents:
//	  planner: {groups: [planners]}
//	  partner: {id: spiffe://partner.example/agent/quotes}
//	tasks:
//	  support: {owner: planner, class: customer-support, sensitivity: pii}
//	tests:
//	  - {name: planner calls partner, from: planner, to: partner, port: 443, expect: allow}
//	  - {name: pii task stays home, from: support, to: partner, port: 443, expect: deny}
type Tests struct {
	Agents map[string]AgentFixture `json:"agents,omitempty" yaml:"agents"`
	Tasks  map[string]TaskFixture  `json:"tasks,omitempty" yaml:"tasks"`
	Cases  []TestCase              `json:"tests" yaml:"tests"`
}

// AgentFixture is an agent the tests name.
type AgentFixture struct {
	// ID is its SPIFFE ID; default spiffe://<the document's domain>/agent/<name>.
	ID string `json:"id,omitempty" yaml:"id"`
	// Addr is its overlay address; default an address derived from its
	// name (FixtureAddr), so a fixture has the same address everywhere.
	Addr   string   `json:"addr,omitempty" yaml:"addr"`
	Groups []string `json:"groups,omitempty" yaml:"groups"`
	Roles  []string `json:"roles,omitempty" yaml:"roles"`
	Skills []string `json:"skills,omitempty" yaml:"skills"`
	Tags   []string `json:"tags,omitempty" yaml:"tags"`
}

// TaskFixture is a task the tests name.
type TaskFixture struct {
	Owner       string   `json:"owner,omitempty" yaml:"owner"`   // an agent fixture; required unless Parent is set
	Parent      string   `json:"parent,omitempty" yaml:"parent"` // a task fixture: this is its sub-agent
	Addr        string   `json:"addr,omitempty" yaml:"addr"`
	Class       string   `json:"class,omitempty" yaml:"class"`
	Sensitivity string   `json:"sensitivity,omitempty" yaml:"sensitivity"`
	Scope       []string `json:"scope,omitempty" yaml:"scope"`
}

// TestCase is one named request and the decision expected of it.
type TestCase struct {
	Name   string `json:"name" yaml:"name"`
	From   string `json:"from" yaml:"from"`                             // an agent or task fixture
	To     string `json:"to" yaml:"to"`                                 // an agent or task fixture
	Action string `json:"action,omitempty" yaml:"action"`               // connect (default), discover, audit
	Proto  string `json:"proto,omitempty" yaml:"proto"`                 // tcp (default), udp, icmp
	Port   int    `json:"port,omitempty" yaml:"port"`                   // for tcp and udp
	Expect string `json:"expect" yaml:"expect"`                         // allow or deny
	Policy string `json:"expect_policy,omitempty" yaml:"expect_policy"` // if set, one of the deciding policies
	Via    string `json:"expect_via,omitempty" yaml:"expect_via"`       // if set, the waypoints the decision carries
	Reason string `json:"expect_reason,omitempty" yaml:"expect_reason"` // if set, the reason code (policy_denied, scope, ...)
}

// ParseTests reads a tests file (YAML or JSON). Unknown keys are errors,
// with their line.
func ParseTests(data []byte) (*Tests, error) {
	if len(data) > MaxDocumentSize {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrTests, len(data), MaxDocumentSize)
	}
	var t Tests
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTests, err)
	}
	if len(t.Cases) > MaxTests || len(t.Agents) > MaxFixtures || len(t.Tasks) > MaxFixtures {
		return nil, fmt.Errorf("%w: more than %d tests or %d agents or tasks", ErrTooLarge, MaxTests, MaxFixtures)
	}
	return &t, nil
}

// LoadTests reads a tests file.
func LoadTests(path string) (*Tests, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	t, err := ParseTests(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// FixtureAddr returns the overlay address a fixture without an addr gets:
// that of the agent key whose seed is SHA-256("agent6 policy fixture\0" +
// name). No real agent holds that key.
func FixtureAddr(name string) netip.Addr {
	seed := sha256.Sum256([]byte("agent6 policy fixture\x00" + name))
	k, _ := identity.PrivateKeyFromSeed(seed[:])
	a, _ := k.Public().Addr()
	return a
}

func fixtureAddr(name, addr string) (netip.Addr, error) {
	if addr == "" {
		return FixtureAddr(name), nil
	}
	a, err := netip.ParseAddr(addr)
	if err != nil || !identity.IsOverlay(a) || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("addr %q is not an overlay address", addr)
	}
	return a, nil
}

// fixtures are the parties of a tests section, resolved.
type fixtures struct {
	parties map[string]Party
}

// resolve builds the parties the tests name; td is the document's domain.
func (t *Tests) resolve(td string) (*fixtures, error) {
	f := &fixtures{parties: make(map[string]Party, len(t.Agents)+len(t.Tasks))}
	agents := make(map[string]Agent, len(t.Agents))
	for _, name := range sortedMapKeys(t.Agents) {
		a := t.Agents[name]
		ag, err := a.agent(name, td)
		if err != nil {
			return nil, fmt.Errorf("agents.%s: %v", name, err)
		}
		agents[name] = ag
		f.parties[name] = AgentParty(ag)
	}
	for _, name := range sortedMapKeys(t.Tasks) {
		if _, ok := t.Agents[name]; ok {
			return nil, fmt.Errorf("tasks.%s: %q names an agent too", name, name)
		}
		p, err := t.task(name, agents, 0)
		if err != nil {
			return nil, err
		}
		f.parties[name] = p
	}
	return f, nil
}

func (a AgentFixture) agent(name, td string) (Agent, error) {
	addr, err := fixtureAddr(name, a.Addr)
	if err != nil {
		return Agent{}, err
	}
	id := a.ID
	if id == "" {
		id = "spiffe://" + td + "/agent/" + name
	}
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return Agent{}, fmt.Errorf("id %q: %v (give an id when the name is not a SPIFFE path segment)", id, err)
	}
	if !strings.HasPrefix(sid.Path(), "/agent/") {
		return Agent{}, fmt.Errorf("id %q is not spiffe://<trust-domain>/agent/<name>", id)
	}
	var tags []string
	for _, t := range a.Tags {
		if !slices.Contains(tags, t) {
			tags = append(tags, t)
		}
	}
	return Agent{
		Addr: addr, ID: sid.String(), TrustDomain: sid.TrustDomain().Name(),
		Groups: a.Groups, Roles: a.Roles, Skills: a.Skills, Tags: tags,
	}, nil
}

// task resolves task fixture name and its ancestors into a party.
func (t *Tests) task(name string, agents map[string]Agent, depth int) (Party, error) {
	if depth >= identity.MaxDelegationDepth {
		return Party{}, fmt.Errorf("tasks.%s: parent chain deeper than %d (or a cycle)", name, identity.MaxDelegationDepth)
	}
	tf, ok := t.Tasks[name]
	if !ok {
		return Party{}, fmt.Errorf("no task %q", name)
	}
	addr, err := fixtureAddr(name, tf.Addr)
	if err != nil {
		return Party{}, fmt.Errorf("tasks.%s: %v", name, err)
	}
	scope, err := ParseScope(tf.Scope)
	if err != nil {
		return Party{}, fmt.Errorf("tasks.%s: scope: %v", name, err)
	}
	pseudo := sha256.Sum256([]byte("agent6 policy fixture task\x00" + name))
	task := Task{Addr: addr, Class: tf.Class, Sensitivity: tf.Sensitivity, Pseudonym: hex.EncodeToString(pseudo[:16]), Scope: scope, Depth: 1}
	if tf.Parent == "" {
		owner, ok := agents[tf.Owner]
		if !ok {
			return Party{}, fmt.Errorf("tasks.%s: owner %q is not an agent of the tests", name, tf.Owner)
		}
		task.Owner = owner.Addr
		return TaskParty(owner, task), nil
	}
	parent, err := t.task(tf.Parent, agents, depth+1)
	if err != nil {
		return Party{}, fmt.Errorf("tasks.%s: parent: %v", name, err)
	}
	if tf.Owner != "" && agents[tf.Owner].Addr != parent.Agent.Addr {
		return Party{}, fmt.Errorf("tasks.%s: owner %q is not its parent's owner", name, tf.Owner)
	}
	pt := parent.Tasks[0]
	task.Owner = pt.Owner
	task.Depth = pt.Depth + 1
	task.Parents = append([]netip.Addr{pt.Addr}, pt.Parents...)
	return TaskParty(parent.Agent, task, parent.Tasks...), nil
}

func sortedMapKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// request builds the request of one test case.
func (c *TestCase) request(f *fixtures) (Request, error) {
	from, ok := f.parties[c.From]
	if !ok {
		return Request{}, fmt.Errorf("from %q is not an agent or task of the tests", c.From)
	}
	to, ok := f.parties[c.To]
	if !ok {
		return Request{}, fmt.Errorf("to %q is not an agent or task of the tests", c.To)
	}
	r := Request{Principal: from, Resource: to}
	if c.Action != "" {
		a, err := ParseAction(c.Action)
		if err != nil {
			return Request{}, err
		}
		r.Action = a
	}
	if r.Action == ActionConnect {
		r.Proto = ProtoTCP
		if c.Proto != "" {
			p, err := ParseProto(c.Proto)
			if err != nil {
				return Request{}, err
			}
			r.Proto = p
		}
		if c.Port < 0 || c.Port > 65535 || (c.Port == 0 && r.Proto != ProtoICMP) {
			return Request{}, fmt.Errorf("port %d: want 1 to 65535 for %s", c.Port, r.Proto)
		}
		if r.Proto == ProtoICMP && c.Port != 0 {
			return Request{}, fmt.Errorf("icmp has no port")
		}
		r.Port = uint16(c.Port)
	} else if c.Proto != "" || c.Port != 0 {
		return Request{}, fmt.Errorf("proto and port belong to connect, not %s", r.Action)
	}
	return r, nil
}

// check validates the section against the document's trust domain td:
// fixtures resolve, every test names known fixtures, expects allow or deny,
// and has at least one end in td (a document decides only for its own
// agents). Names must be unique.
func (t *Tests) check(td string) error {
	f, err := t.resolve(td)
	if err != nil {
		return err
	}
	seen := make(map[string]bool, len(t.Cases))
	for i := range t.Cases {
		c := &t.Cases[i]
		if c.Name == "" {
			return fmt.Errorf("tests[%d]: name is required", i)
		}
		if seen[c.Name] {
			return fmt.Errorf("tests[%d]: name %q is used twice", i, c.Name)
		}
		seen[c.Name] = true
		if c.Expect != "allow" && c.Expect != "deny" {
			return fmt.Errorf("test %q: expect %q: want allow or deny", c.Name, c.Expect)
		}
		if c.Reason != "" && !slices.Contains(reasonNames[:], c.Reason) {
			return fmt.Errorf("test %q: expect_reason %q is not a reason code", c.Name, c.Reason)
		}
		r, err := c.request(f)
		if err != nil {
			return fmt.Errorf("test %q: %v", c.Name, err)
		}
		if r.Principal.TrustDomain() != td && r.Resource.TrustDomain() != td {
			return fmt.Errorf("test %q: neither %s nor %s is in trust domain %s, which this document governs", c.Name, c.From, c.To, td)
		}
	}
	return nil
}

// TestResult is the outcome of one test.
type TestResult struct {
	Name     string
	Pass     bool
	Expected string
	Decision Decision // this document's decision (the sides in its domain)
	Problem  string   // why it failed
}

// TestReport is the outcome of a document's tests.
type TestReport struct {
	Doc     string
	Results []TestResult
}

// Failed returns the results that failed.
func (r *TestReport) Failed() []TestResult {
	var out []TestResult
	for _, t := range r.Results {
		if !t.Pass {
			out = append(out, t)
		}
	}
	return out
}

// Err returns ErrTestsFailed naming the first failing test and how many
// failed, or nil if every test passed.
func (r *TestReport) Err() error {
	failed := r.Failed()
	if len(failed) == 0 {
		return nil
	}
	msg := fmt.Sprintf("test %q: %s", failed[0].Name, failed[0].Problem)
	if len(failed) > 1 {
		msg += fmt.Sprintf(" (and %d more of %d tests)", len(failed)-1, len(r.Results))
	}
	return &Error{Reason: ErrTestsFailed, Doc: r.Doc, Msg: msg}
}

// RunTests evaluates every test of a compiled document against that
// document alone: the decision of the sides of each request in the
// document's trust domain (outbound when the principal is in it, inbound
// when the resource is), as a node of that domain would decide with no
// other domain's policy in view. Task scopes count; budgets do not.
func RunTests(d *Document) *TestReport {
	rep := &TestReport{Doc: d.String()}
	if d.Tests == nil || d.c == nil {
		return rep
	}
	f, err := d.Tests.resolve(d.TrustDomain)
	if err != nil { // Compile checked this; a hand-built document may not have been
		rep.Results = append(rep.Results, TestResult{Name: "(fixtures)", Problem: err.Error()})
		return rep
	}
	for i := range d.Tests.Cases {
		c := &d.Tests.Cases[i]
		res := TestResult{Name: c.Name, Expected: c.Expect}
		r, err := c.request(f)
		if err != nil {
			res.Problem = err.Error()
			rep.Results = append(rep.Results, res)
			continue
		}
		res.Decision = decideOne(d, &r)
		res.Pass, res.Problem = c.judge(&res.Decision)
		rep.Results = append(rep.Results, res)
	}
	return rep
}

// judge compares a decision with the test's expectations.
func (c *TestCase) judge(d *Decision) (bool, string) {
	got := "deny"
	if d.Allow {
		got = "allow"
	}
	if got != c.Expect {
		return false, fmt.Sprintf("expected %s, got %s (%s)", c.Expect, got, d.Summary())
	}
	if c.Reason != "" && d.Reason.String() != c.Reason {
		return false, fmt.Sprintf("expected reason %s, got %s (%s)", c.Reason, d.Reason, d.Summary())
	}
	if c.Policy != "" && !slices.Contains(d.Out.Policies, c.Policy) && !slices.Contains(d.In.Policies, c.Policy) {
		return false, fmt.Sprintf("expected policy %q to decide, got %s", c.Policy, d.Summary())
	}
	if c.Via != "" {
		want, err := ParseVia(c.Via)
		if err != nil {
			return false, fmt.Sprintf("expect_via: %v", err)
		}
		if !slices.Equal(want, d.Obligations.Via) {
			return false, fmt.Sprintf("expected @via(%q), got %q", c.Via, (&Obligations{Via: d.Obligations.Via}).String())
		}
	}
	return true, ""
}

// decideOne decides r with d as the only document in view: the sides in
// d's domain are decided by d; a side in another domain is left allowed
// (that domain's document is not d's to judge).
func decideOne(d *Document, r *Request) Decision {
	snap := &snapshot{docs: map[string]*Document{d.TrustDomain: d}}
	dec := decide(snap, r, nil, nil)
	td := d.TrustDomain
	if r.Principal.TrustDomain() != td {
		dec.Out = Verdict{Domain: r.Principal.TrustDomain(), Allow: true, Default: true, Policies: []string{"(not judged: another trust domain)"}}
	}
	if r.Resource.TrustDomain() != td {
		dec.In = Verdict{Domain: r.Resource.TrustDomain(), Allow: true, Default: true, Policies: []string{"(not judged: another trust domain)"}}
	}
	dec.settle()
	return dec
}

// Parties returns the agents and tasks the tests define, by name, as a
// document of trust domain td sees them: what an offline explain can name.
func (t *Tests) Parties(td string) (map[string]Party, error) {
	f, err := t.resolve(td)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTests, err)
	}
	return f.parties, nil
}
