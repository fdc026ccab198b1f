package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node/card"
	"github.com/agent6/agent6/node/dns"
)

// ErrNoMembership reports a call that needs membership (a Credential and
// a Bundle) on a node that runs without.
var ErrNoMembership = errors.New("node: this node runs without membership")

// Query selects agents for Discover. Empty fields match any agent; set
// fields must all match.
type Query struct {
	Skill       string `json:"skill,omitempty"`        // a skill id in the agent's card
	Tag         string `json:"tag,omitempty"`          // a tag of any skill in the card
	Name        string `json:"name,omitempty"`         // the agent name in its SPIFFE ID, or its card's name (case-insensitive)
	TrustDomain string `json:"trust_domain,omitempty"` // the agent's trust domain
	Group       string `json:"group,omitempty"`        // a group in the agent's credential
}

// Discovery is one agent that Discover found: where it is, who it is,
// what it says it can do, and whether this node may reach it.
type Discovery struct {
	Addr        netip.Addr           `json:"address"`
	PublicKey   identity.WGPublicKey `json:"public_key"`
	ID          string               `json:"spiffe_id"`
	Name        string               `json:"name"` // the agent name from the SPIFFE ID
	TrustDomain string               `json:"trust_domain"`
	DNSName     string               `json:"dns_name"` // <name>.<trust-domain>.agent6.
	Groups      []string             `json:"groups,omitempty"`
	Roles       []string             `json:"roles,omitempty"`
	State       string               `json:"state"` // alive or suspect
	Card        *card.Card           `json:"card,omitempty"`
	// Decision is the policy's answer for this node as the caller.
	Decision Decision `json:"decision"`
}

// Discover returns the admitted agents (alive or suspect, not this node)
// that match q, each with the policy decision for this node reaching it,
// sorted by SPIFFE ID then address. It reads membership's state and does
// not block; it fails with ErrNoMembership on a node without membership.
func (n *Node) Discover(ctx context.Context, q Query) ([]Discovery, error) {
	if _, err := n.running(); err != nil {
		return nil, fmt.Errorf("node: discover: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("node: discover: %w", err)
	}
	m := n.Membership()
	if m == nil {
		return nil, fmt.Errorf("node: discover: %w", ErrNoMembership)
	}
	self := m.Credential()
	from := Identity{Addr: self.Addr, ID: self.ID, TrustDomain: self.TrustDomain, Groups: self.Groups, Roles: self.Roles}
	pol := n.policy()
	out := []Discovery{}
	for _, mb := range m.Members() {
		if (mb.State != "alive" && mb.State != "suspect") || mb.ID == "" || mb.Addr == self.Addr {
			continue
		}
		name := agentName(mb.ID)
		if !q.matches(mb, name) {
			continue
		}
		to := Identity{Addr: mb.Addr, ID: mb.ID, TrustDomain: mb.TrustDomain, Groups: mb.Groups, Roles: mb.Roles}
		out = append(out, Discovery{
			Addr: mb.Addr, PublicKey: mb.PublicKey, ID: mb.ID, Name: name, TrustDomain: mb.TrustDomain,
			DNSName: dns.Name(name, mb.TrustDomain), Groups: mb.Groups, Roles: mb.Roles, State: mb.State,
			Card: mb.Card, Decision: pol.Decide(from, to),
		})
	}
	slices.SortFunc(out, func(a, b Discovery) int {
		return cmp.Or(strings.Compare(a.ID, b.ID), a.Addr.Compare(b.Addr))
	})
	return out, nil
}

func (q Query) matches(mb Member, name string) bool {
	c := mb.Card
	switch {
	case q.Skill != "" && (c == nil || !c.HasSkill(q.Skill)):
		return false
	case q.Tag != "" && (c == nil || !c.HasTag(q.Tag)):
		return false
	case q.Name != "" && !strings.EqualFold(q.Name, name) && (c == nil || !strings.EqualFold(q.Name, c.Name)):
		return false
	case q.TrustDomain != "" && !strings.EqualFold(q.TrustDomain, mb.TrustDomain):
		return false
	case q.Group != "" && !slices.Contains(mb.Groups, q.Group):
		return false
	}
	return true
}

// agentName returns <name> from a verified spiffe://<td>/agent/<name>.
func agentName(id string) string {
	if i := strings.LastIndex(id, "/agent/"); i >= 0 {
		return id[i+len("/agent/"):]
	}
	return ""
}
