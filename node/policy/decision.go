package policy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	cedar "github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"
)

// Reason is the code of a decision, for counters and logs.
type Reason uint8

const (
	// ReasonPolicy: allowed by the permits of the documents in force.
	ReasonPolicy Reason = iota
	// ReasonDefault: allowed by the default, inside a trust domain that
	// has no document.
	ReasonDefault
	// ReasonPolicyDenied: a document denied it: a forbid matched, or no
	// permit did.
	ReasonPolicyDenied
	// ReasonNoPolicy: the default denied it: it crosses trust domains and
	// a side's domain has no document to permit it.
	ReasonNoPolicy
	// ReasonScope: outside the scope of the principal task (or of an
	// ancestor's), as its delegation states it.
	ReasonScope
	// ReasonBudgetExceeded: a budget (from a delegation or an obligation)
	// is spent. Decisions do not carry it; Accounting.Admit returns it.
	ReasonBudgetExceeded
	// ReasonUnknownDomain: an end has no trust domain (no verified
	// credential), so no document can govern it.
	ReasonUnknownDomain
	numReasons
)

var reasonNames = [numReasons]string{
	ReasonPolicy:         "policy",
	ReasonDefault:        "default",
	ReasonPolicyDenied:   "policy_denied",
	ReasonNoPolicy:       "no_policy",
	ReasonScope:          "scope",
	ReasonBudgetExceeded: "budget_exceeded",
	ReasonUnknownDomain:  "unknown_domain",
}

func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason-%d", uint8(r))
}

// MarshalText returns the reason's code.
func (r Reason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads a reason code.
func (r *Reason) UnmarshalText(b []byte) error {
	for i, n := range reasonNames {
		if n == string(b) {
			*r = Reason(i)
			return nil
		}
	}
	return fmt.Errorf("policy: unknown reason %q", b)
}

// Reasons lists every reason code, for counters.
func Reasons() []Reason {
	out := make([]Reason, numReasons)
	for i := range out {
		out[i] = Reason(i)
	}
	return out
}

// Rules of the default, in Verdict.Policies when a domain has no document.
// The names are those node.DefaultPolicy has always used.
const (
	RuleDefaultSameDomain  = "default:same-trust-domain"
	RuleDefaultCrossDomain = "default:cross-trust-domain"
)

// Verdict is one trust domain's answer for its side of a flow: the
// sender's domain outbound, the receiver's inbound.
type Verdict struct {
	Domain  string `json:"domain"`
	Serial  uint64 `json:"serial,omitempty"` // of the document; 0 for the default
	Allow   bool   `json:"allow"`
	Default bool   `json:"default,omitempty"` // no document: the default decided
	// Policies are the deciding policy ids: the permits that allowed, or
	// the forbids that denied (none when no permit matched), or the
	// default's rule.
	Policies []string `json:"policies,omitempty"`

	reason  Reason
	permits []*compiledPolicy // the permits that allowed, for obligations
}

// Limit is a budget an obligation sets: one policy's @rate, @bytes and
// @fan_out, which Accounting enforces per agent and policy.
type Limit struct {
	Domain  string  `json:"domain"`
	Policy  string  `json:"policy"`
	Rate    float64 `json:"rate,omitempty"`
	Bytes   uint64  `json:"bytes,omitempty"`
	FanOut  int     `json:"fan_out,omitempty"`
	inbound bool    // from the receiver's domain
}

// Decision is the answer to a Request. A flow is allowed when both sides
// allow it: the sender's domain outbound (Out) and the receiver's inbound
// (In); inside one trust domain both are the one evaluation. Decisions are
// shared by the cache: treat their slices as read-only.
type Decision struct {
	Allow  bool    `json:"allow"`
	Reason Reason  `json:"reason"`
	Out    Verdict `json:"out"`
	In     Verdict `json:"in"`
	// Obligations are those of every permit that allowed, composed (see
	// Obligations.compose).
	Obligations Obligations `json:"obligations"`
	// Limits are the budgets among the obligations, per policy.
	Limits []Limit `json:"limits,omitempty"`
	// ScopeTask is the task whose scope refused, for ReasonScope.
	ScopeTask netip.Addr `json:"scope_task,omitzero"`
	// Generation is the engine's generation the decision was made at.
	Generation uint64 `json:"generation"`
}

// MarshalJSON adds the rule and the summary to the decision's fields.
func (d Decision) MarshalJSON() ([]byte, error) {
	type plain Decision
	return json.Marshal(struct {
		plain
		Rule    string `json:"rule"`
		Summary string `json:"summary"`
	}{plain(d), d.Rule(), d.Summary()})
}

// Rule names the rule that decided, for logs and counters: for a denial
// the first denying policy of the side that denied (a forbid, or "none"
// when no permit matched), for an allow the first permit outbound; as
// "<domain>/<policy id>", or a default rule, or "scope".
func (d Decision) Rule() string {
	switch d.Reason {
	case ReasonScope:
		return "scope"
	case ReasonUnknownDomain:
		return "unknown-domain"
	}
	v := &d.Out
	if d.Out.Allow && !d.In.Allow {
		v = &d.In
	}
	if v.Default {
		if len(v.Policies) > 0 {
			return v.Policies[0]
		}
		return RuleDefaultCrossDomain
	}
	if len(v.Policies) == 0 {
		return v.Domain + "/none"
	}
	return v.Domain + "/" + v.Policies[0]
}

// Summary says in a sentence why, for people.
func (d Decision) Summary() string {
	switch d.Reason {
	case ReasonUnknownDomain:
		return "an end has no verified credential, so no trust domain's policy admits it"
	case ReasonScope:
		return fmt.Sprintf("outside the scope of task %s", d.ScopeTask)
	case ReasonDefault:
		return fmt.Sprintf("inside trust domain %s, which has no policy document", d.Out.Domain)
	case ReasonPolicy:
		s := "allowed by " + verdictPolicies(&d.Out)
		if d.In.Domain != d.Out.Domain {
			s += " and " + verdictPolicies(&d.In)
		}
		return s
	}
	v := &d.Out
	dir := "outbound"
	if d.Out.Allow {
		v, dir = &d.In, "inbound"
	}
	if d.Out.Domain == d.In.Domain {
		dir = "inside the domain"
	}
	switch {
	case v.Default:
		return fmt.Sprintf("no rule allows crossing from %s to %s: %s has no policy document (%s)", d.Out.Domain, d.In.Domain, v.Domain, dir)
	case len(v.Policies) == 0:
		return fmt.Sprintf("no permit of %s serial %d matches (%s)", v.Domain, v.Serial, dir)
	}
	return fmt.Sprintf("forbidden by %s (%s)", verdictPolicies(v), dir)
}

func verdictPolicies(v *Verdict) string {
	if v.Default {
		return "the default of " + v.Domain
	}
	return fmt.Sprintf("%s serial %d: %s", v.Domain, v.Serial, strings.Join(v.Policies, ", "))
}

// settle derives Allow, Reason, Obligations and Limits from the verdicts.
// A decision already refused for scope or an unknown domain stays so.
func (d *Decision) settle() {
	d.Obligations, d.Limits = Obligations{}, nil
	if d.Reason == ReasonScope || d.Reason == ReasonUnknownDomain {
		d.Allow = false
		return
	}
	switch {
	case !d.Out.Allow:
		d.Allow, d.Reason = false, d.Out.reason
		return
	case !d.In.Allow:
		d.Allow, d.Reason = false, d.In.reason
		return
	case d.Out.Default && d.In.Default:
		d.Allow, d.Reason = true, ReasonDefault
	default:
		d.Allow, d.Reason = true, ReasonPolicy
	}
	d.addObligations(&d.Out, false)
	if d.In.Domain != d.Out.Domain {
		d.addObligations(&d.In, true)
	}
}

func (d *Decision) addObligations(v *Verdict, inbound bool) {
	for _, p := range v.permits {
		d.Obligations.compose(&p.ob)
		if p.ob.hasLimits() {
			d.Limits = append(d.Limits, Limit{Domain: v.Domain, Policy: p.id, Rate: p.ob.Rate, Bytes: p.ob.Bytes, FanOut: p.ob.FanOut, inbound: inbound})
		}
	}
}

// evaluator builds a request's Cedar form and entities, as one trust
// domain's document sees them, taking entities from ec when it holds them
// (ec may be nil).
type evaluator struct {
	r       *Request
	ec      *entityCache
	view    string // the domain the entities were built for; "" before build
	ents    entities
	creq    types.Request
	store   [2 * 5]types.Entity
	scratch [32]types.EntityUID
}

// build readies ev for the document of trust domain view.
func (ev *evaluator) build(view string) {
	if ev.view == view && ev.ents.list != nil {
		return
	}
	ev.view = view
	ev.ents.list = ev.store[:0]
	ev.creq = types.Request{
		Principal: ev.ents.add(&ev.r.Principal, view, ev.ec),
		Action:    actionUIDs[ev.r.Action],
		Resource:  ev.ents.add(&ev.r.Resource, view, ev.ec),
		Context:   ev.r.context(),
	}
}

// snapshot is the engine's state: the documents in force, by trust domain,
// and the generation. It is immutable; a change makes a new one.
type snapshot struct {
	gen  uint64
	docs map[string]*Document
}

// decide answers r with the documents of snap. ex, if not nil, collects
// the explanation.
func decide(snap *snapshot, r *Request, ec *entityCache, ex *Explanation) Decision {
	d := Decision{Generation: snap.gen}
	pd, rd := r.Principal.TrustDomain(), r.Resource.TrustDomain()
	d.Out.Domain, d.In.Domain = pd, rd
	if pd == "" || rd == "" {
		d.Reason = ReasonUnknownDomain
		d.settle()
		return d
	}
	if t, ok := scopeAllows(r); !ok {
		d.Reason, d.ScopeTask = ReasonScope, t
		if ex == nil {
			d.settle()
			return d
		}
	}
	ev := evaluators.Get().(*evaluator)
	ev.reset(r, ec)
	d.Out = side(snap.docs[pd], pd, r, ev, ex.side("outbound"))
	if pd == rd {
		d.In = d.Out
		if ex != nil {
			ex.Sides[0].Direction = "outbound and inbound"
		}
	} else {
		d.In = side(snap.docs[rd], rd, r, ev, ex.side("inbound"))
	}
	ev.reset(nil, nil)
	evaluators.Put(ev)
	d.settle()
	return d
}

// evaluators recycles evaluators: Cedar holds the entity store as an
// interface, so an evaluator lives on the heap, and at about 2 KiB it is
// worth keeping.
var evaluators = sync.Pool{New: func() any { return new(evaluator) }}

// reset readies ev for r, dropping what it held.
func (ev *evaluator) reset(r *Request, ec *entityCache) {
	clear(ev.store[:min(len(ev.ents.list), len(ev.store))])
	ev.r, ev.ec, ev.view, ev.ents.list, ev.creq = r, ec, "", nil, types.Request{}
}

// The default's deciding rules, shared by every default verdict.
var (
	sameDomainRules  = []string{RuleDefaultSameDomain}
	crossDomainRules = []string{RuleDefaultCrossDomain}
)

// side decides one domain's side of r with its document doc (nil: the
// default).
func side(doc *Document, domain string, r *Request, ev *evaluator, ex *SideExplanation) Verdict {
	if ex != nil {
		ex.Domain = domain
	}
	if doc == nil {
		v := Verdict{Domain: domain, Default: true}
		if r.Principal.TrustDomain() == r.Resource.TrustDomain() {
			v.Allow, v.reason, v.Policies = true, ReasonDefault, sameDomainRules
		} else {
			v.reason, v.Policies = ReasonNoPolicy, crossDomainRules
		}
		if ex != nil {
			ex.Verdict = v
		}
		return v
	}
	ev.build(domain)
	c := doc.c
	cand := c.idx.candidates(&ev.creq, r.Action, &ev.ents, ev.scratch[:])
	decision, diag := cedar.Authorize(policySubset{ps: c.policies, set: cand}, &ev.ents, ev.creq)
	v := Verdict{Domain: domain, Serial: doc.Serial, Allow: decision == cedar.Allow, reason: ReasonPolicyDenied}
	if v.Allow {
		v.reason = ReasonPolicy
	}
	for _, reason := range diag.Reasons {
		i := c.byID[reason.PolicyID]
		v.Policies = append(v.Policies, c.policies[i].id)
		if v.Allow {
			v.permits = append(v.permits, &c.policies[i])
		}
	}
	if ex != nil {
		ex.Verdict = v
		ex.explain(doc, cand, ev)
	}
	return v
}
