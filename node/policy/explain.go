package policy

import (
	"fmt"
	"io"
	"strings"

	cedar "github.com/cedar-policy/cedar-go"
)

// Explanation shows how a decision came about: the request, each trust
// domain's side with the policies that matched and the errors met, and
// the obligations.
type Explanation struct {
	Principal string            `json:"principal"`
	Resource  string            `json:"resource"`
	Action    string            `json:"action"`
	Proto     string            `json:"proto,omitempty"`
	Port      uint16            `json:"port,omitempty"`
	Decision  Decision          `json:"decision"`
	Reason    string            `json:"reason"`
	Summary   string            `json:"summary"`
	Scope     []string          `json:"scope,omitempty"` // the principal task's scope, if it has one
	Sides     []SideExplanation `json:"sides"`
}

// SideExplanation is one trust domain's side of a decision.
type SideExplanation struct {
	Direction string  `json:"direction"` // "outbound", "inbound", or both inside one domain
	Domain    string  `json:"domain"`
	Verdict   Verdict `json:"verdict"`
	// Total is the document's number of policies, Candidates how many the
	// index left to evaluate.
	Total      int           `json:"total"`
	Candidates int           `json:"candidates"`
	Matched    []PolicyInfo  `json:"matched,omitempty"` // every policy that matched, permits and forbids
	Errors     []PolicyError `json:"errors,omitempty"`  // policies skipped because evaluating them failed
}

// PolicyError is a policy whose evaluation failed for a request; Cedar
// skips such a policy (a forbid that errs does not deny).
type PolicyError struct {
	ID       string   `json:"id"`
	Position Position `json:"position"`
	Message  string   `json:"message"`
}

func (ex *Explanation) side(dir string) *SideExplanation {
	if ex == nil {
		return nil
	}
	ex.Sides = append(ex.Sides, SideExplanation{Direction: dir})
	return &ex.Sides[len(ex.Sides)-1]
}

// explain evaluates every candidate policy on its own to list all that
// match, not only the deciding ones.
func (s *SideExplanation) explain(doc *Document, cand bitset, ev *evaluator) {
	c := doc.c
	s.Total, s.Candidates = len(c.policies), cand.count()
	for i := range c.policies {
		if cand[i/64]&(1<<(i%64)) == 0 {
			continue
		}
		one := newBitset(len(c.policies))
		one.set(i)
		_, diag := cedar.Authorize(policySubset{ps: c.policies, set: one}, &ev.ents, ev.creq)
		if len(diag.Errors) > 0 {
			s.Errors = append(s.Errors, PolicyError{ID: c.policies[i].id, Position: Position{c.policies[i].line, c.policies[i].column}, Message: diag.Errors[0].Message})
		}
		if len(diag.Reasons) > 0 { // alone, a matching permit allows and a matching forbid denies, each naming itself
			s.Matched = append(s.Matched, c.policies[i].info())
		}
	}
}

// Explain returns how the engine decides r, bypassing the cache. It costs
// one evaluation per candidate policy: for people and tools, not the
// packet path.
func (e *Engine) Explain(r *Request) *Explanation {
	snap := e.state.Load()
	ex := &Explanation{
		Principal: r.Principal.String(),
		Resource:  r.Resource.String(),
		Action:    r.Action.String(),
	}
	if r.Action == ActionConnect {
		ex.Proto, ex.Port = r.Proto.String(), r.Port
	}
	if r.Principal.IsTask() {
		ex.Scope = r.Principal.Tasks[0].Scope.Strings()
	}
	ex.Decision = decide(snap, r, nil, ex)
	ex.Reason = ex.Decision.Reason.String()
	ex.Summary = ex.Decision.Summary()
	return ex
}

// WriteText writes the explanation for people.
func (ex *Explanation) WriteText(w io.Writer) error {
	var b strings.Builder
	verdict := "deny"
	if ex.Decision.Allow {
		verdict = "allow"
	}
	fmt.Fprintf(&b, "%s: %s (%s)\n", verdict, ex.Summary, ex.Reason)
	fmt.Fprintf(&b, "  principal  %s\n", ex.Principal)
	fmt.Fprintf(&b, "  resource   %s\n", ex.Resource)
	fmt.Fprintf(&b, "  action     %s", ex.Action)
	if ex.Proto != "" {
		fmt.Fprintf(&b, " %s", ex.Proto)
		if ex.Port != 0 {
			fmt.Fprintf(&b, "/%d", ex.Port)
		}
	}
	b.WriteString("\n")
	if len(ex.Scope) > 0 {
		fmt.Fprintf(&b, "  task scope %s\n", strings.Join(ex.Scope, "; "))
	}
	for _, s := range ex.Sides {
		v := &s.Verdict
		fmt.Fprintf(&b, "  %s, trust domain %s: ", s.Direction, s.Domain)
		sv := "deny"
		if v.Allow {
			sv = "allow"
		}
		switch {
		case v.Default:
			fmt.Fprintf(&b, "%s by the default (%s; no policy document)\n", sv, strings.Join(v.Policies, ", "))
			continue
		case len(v.Policies) == 0:
			fmt.Fprintf(&b, "%s, no permit matches (serial %d)\n", sv, v.Serial)
		default:
			fmt.Fprintf(&b, "%s by %s (serial %d)\n", sv, strings.Join(v.Policies, ", "), v.Serial)
		}
		fmt.Fprintf(&b, "    %d of %d policies evaluated (the others' scopes cannot match)\n", s.Candidates, s.Total)
		for _, m := range s.Matched {
			fmt.Fprintf(&b, "    matched %s %q at %s", m.Effect, m.ID, m.Position)
			if o := m.Obligations.String(); o != "" {
				fmt.Fprintf(&b, " %s", o)
			}
			b.WriteString("\n")
		}
		for _, e := range s.Errors {
			fmt.Fprintf(&b, "    skipped %q at %s: %s\n", e.ID, e.Position, e.Message)
		}
	}
	if o := ex.Decision.Obligations.String(); o != "" && ex.Decision.Allow {
		fmt.Fprintf(&b, "  obligations %s\n", o)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
