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

// WhoIs returns the identity behind an overlay address: this node, or one
// of its peers. Because the address is derived from the key and WireGuard
// only accepts packets from a peer's own address, the remote address of any
// connection names the key that sent it: WhoIs(conn.RemoteAddr()) is an
// authenticated answer. It fails with ErrUnknownAddr for an address no
// known key holds.
func (n *Node) WhoIs(addr netip.Addr) (WhoIsResult, error) {
	dev, err := n.running()
	if err != nil {
		return WhoIsResult{}, fmt.Errorf("node: whois: %w", err)
	}
	addr = addr.Unmap()
	if !identity.IsOverlay(addr) {
		return WhoIsResult{}, fmt.Errorf("node: whois %s: %w", addr, ErrNotOverlay)
	}
	if t, ok := n.Task(addr); ok {
		r, err := n.WhoIs(n.Addr())
		info := t.Info()
		r.Addr, r.Task = addr, &info
		return r, err
	}
	if m := n.Membership(); m != nil {
		if ti, ok := m.LookupTask(addr); ok {
			r, err := n.WhoIs(ti.Owner)
			if err != nil {
				return WhoIsResult{}, err
			}
			r.Addr, r.Task = addr, &ti
			return r, nil
		}
	}
	if addr == n.Addr() {
		r := WhoIsResult{Addr: addr, PublicKey: n.PublicKey(), Self: true}
		if m := n.Membership(); m != nil {
			c := m.Credential()
			r.ID, r.TrustDomain, r.Groups, r.Roles, r.State = c.ID, c.TrustDomain, c.Groups, c.Roles, "alive"
		}
		return r, nil
	}
	if m := n.Membership(); m != nil {
		if mb, ok := m.Lookup(addr); ok && mb.ID != "" {
			return WhoIsResult{Addr: addr, PublicKey: mb.PublicKey, ID: mb.ID, TrustDomain: mb.TrustDomain,
				Groups: mb.Groups, Roles: mb.Roles, State: mb.State}, nil
		}
	}
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
