package node

import (
	"fmt"
	"net/netip"
)

// Identity is an agent as policy sees it: its address and the
// organisation identity from its verified credential.
type Identity struct {
	Addr        netip.Addr `json:"address"`
	ID          string     `json:"spiffe_id"` // spiffe://<trust-domain>/agent/<name>
	TrustDomain string     `json:"trust_domain"`
	Groups      []string   `json:"groups,omitempty"`
	Roles       []string   `json:"roles,omitempty"`
}

// Decision is a policy's answer to "may from reach to?".
type Decision struct {
	Allow  bool   `json:"allow"`
	Reason string `json:"reason"`         // for people: why
	Rule   string `json:"rule,omitempty"` // which rule decided
}

// Policy decides whether one agent may reach another. Decide must not
// block and must be safe for concurrent use.
type Policy interface {
	Decide(from, to Identity) Decision
}

// Rules of the default policy.
const (
	RuleDefaultSameDomain  = "default:same-trust-domain"
	RuleDefaultCrossDomain = "default:cross-trust-domain"
)

// DefaultPolicy is the policy without a PolicyDocument: allow inside a
// trust domain, deny across trust domains.
type DefaultPolicy struct{}

var _ Policy = DefaultPolicy{}

// Decide allows from to reach to when both are in the same trust domain.
func (DefaultPolicy) Decide(from, to Identity) Decision {
	if from.TrustDomain != "" && from.TrustDomain == to.TrustDomain {
		return Decision{Allow: true, Reason: fmt.Sprintf("inside trust domain %s", from.TrustDomain), Rule: RuleDefaultSameDomain}
	}
	return Decision{Reason: fmt.Sprintf("no rule allows crossing from %s to %s", orUnknown(from.TrustDomain), orUnknown(to.TrustDomain)), Rule: RuleDefaultCrossDomain}
}

func orUnknown(td string) string {
	if td == "" {
		return "an unknown trust domain"
	}
	return td
}

// policy returns the policy this node decides with. Until signed policy
// documents exist, the default.
func (n *Node) policy() Policy { return DefaultPolicy{} }
