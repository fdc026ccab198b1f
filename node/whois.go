package node

import (
	"fmt"
	"net/netip"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node/membership"
)

// WhoIsResult says who holds an overlay address.
type WhoIsResult struct {
	Addr      netip.Addr           `json:"address"`
	PublicKey identity.WGPublicKey `json:"public_key"`
	Self      bool                 `json:"self,omitempty"`
	// With membership: the organisation identity from the agent's verified
	// credential, and its membership state.
	ID          string   `json:"spiffe_id,omitempty"`
	TrustDomain string   `json:"trust_domain,omitempty"`
	Groups      []string `json:"groups,omitempty"`
	Roles       []string `json:"roles,omitempty"`
	State       string   `json:"state,omitempty"`
	// Task is set when the address is a task's (a delegated identity): the
	// fields above then describe the agent that owns it, and PublicKey is
	// that agent's WireGuard key, whose session carries the task.
	Task *membership.TaskInfo `json:"task,omitempty"`
}

// WhoIs returns the identity behind an overlay address: this node, one of
// its tasks, or a peer or a peer's task. Because the address is derived
// from the key and WireGuard only accepts packets from a peer's own
// address (or a task address it proved it delegated), the remote address
// of any connection names the key that sent it: WhoIs(conn.RemoteAddr())
// is an authenticated answer. With membership the answer comes from its
// identity table, the one place that says who holds an address; without,
// from the static WireGuard peers. It fails with ErrUnknownAddr for an
// address no known key holds.
func (n *Node) WhoIs(addr netip.Addr) (WhoIsResult, error) {
	dev, err := n.running()
	if err != nil {
		return WhoIsResult{}, fmt.Errorf("node: whois: %w", err)
	}
	addr = addr.Unmap()
	if !identity.IsOverlay(addr) {
		return WhoIsResult{}, fmt.Errorf("node: whois %s: %w", addr, ErrNotOverlay)
	}
	if m := n.Membership(); m != nil {
		if h, ok := m.Resolve(addr); ok {
			return n.whoIsHolder(m, addr, h)
		}
	} else if addr == n.Addr() {
		return WhoIsResult{Addr: addr, PublicKey: n.PublicKey(), Self: true}, nil
	}
	// A static peer, configured by hand.
	peers, err := dev.Peers()
	if err != nil {
		return WhoIsResult{}, err
	}
	for _, p := range peers {
		if p.Addr == addr {
			return WhoIsResult{Addr: addr, PublicKey: p.PublicKey}, nil
		}
	}
	return WhoIsResult{}, fmt.Errorf("whois %s: %w", addr, ErrUnknownAddr)
}

// whoIsHolder describes the holder of addr from membership's identity
// table.
func (n *Node) whoIsHolder(m *membership.Membership, addr netip.Addr, h membership.Holder) (WhoIsResult, error) {
	switch h.Kind {
	case membership.KindSelf:
		return n.whoIsSelf(m), nil
	case membership.KindLocalTask:
		t, ok := n.Task(addr)
		if !ok { // ended meanwhile
			return WhoIsResult{}, fmt.Errorf("whois %s: %w", addr, ErrUnknownAddr)
		}
		r := n.whoIsSelf(m)
		info := t.Info()
		r.Addr, r.Task = addr, &info
		return r, nil
	}
	mb := h.Member
	if mb.ID == "" {
		return WhoIsResult{}, fmt.Errorf("whois %s: %w", addr, ErrUnknownAddr)
	}
	return WhoIsResult{Addr: addr, PublicKey: mb.PublicKey, ID: mb.ID, TrustDomain: mb.TrustDomain,
		Groups: mb.Groups, Roles: mb.Roles, State: mb.State, Task: h.Task}, nil
}

// whoIsSelf is this node as WhoIs shows it.
func (n *Node) whoIsSelf(m *membership.Membership) WhoIsResult {
	c := m.Credential()
	return WhoIsResult{Addr: n.Addr(), PublicKey: n.PublicKey(), Self: true,
		ID: c.ID, TrustDomain: c.TrustDomain, Groups: c.Groups, Roles: c.Roles, State: "alive"}
}
