package node

import (
	"net/netip"

	"github.com/agent6/agent6/node/dns"
	"github.com/agent6/agent6/node/membership"
)

// dnsSource answers DNS from membership: this node and every admitted
// (alive or suspect) agent.
type dnsSource struct{ m *membership.Membership }

func (s dnsSource) Agents() []dns.Agent {
	self := s.m.Credential()
	members := s.m.Members()
	out := make([]dns.Agent, 0, len(members)+1)
	out = append(out, dns.Agent{Name: self.Name, TrustDomain: self.TrustDomain, Addr: self.Addr})
	for _, mb := range members {
		if (mb.State == "alive" || mb.State == "suspect") && mb.ID != "" {
			out = append(out, dns.Agent{Name: agentName(mb.ID), TrustDomain: mb.TrustDomain, Addr: mb.Addr})
		}
	}
	return out
}

// startDNS serves the agent6. zone on port 53 of the overlay address,
// UDP and TCP; called from Up with n.mu held, when membership runs. DNS is
// a convenience: if the port cannot be bound (a sidecar without the
// privilege to bind port 53), the node runs without it and says so.
func (n *Node) startDNS() {
	ap := netip.AddrPortFrom(n.addr, dns.Port)
	pc, err := n.listenPacket("udp", ap)
	if err != nil {
		n.log.Warn("dns not served", "addr", ap, "err", err)
		return
	}
	ln, err := n.listen("tcp", ap)
	if err != nil {
		pc.Close()
		n.log.Warn("dns not served", "addr", ap, "err", err)
		return
	}
	s := &dns.Server{Source: dnsSource{n.members}, Logger: n.log}
	if err := s.Start(pc, ln); err != nil {
		n.log.Warn("dns not served", "addr", ap, "err", err)
		return
	}
	n.dns = s
	n.log.Info("dns up", "addr", ap, "zone", dns.Zone)
}

// DNSStats returns the DNS server's counters, and false if the node does
// not serve DNS.
func (n *Node) DNSStats() (dns.Stats, bool) {
	n.mu.Lock()
	s := n.dns
	n.mu.Unlock()
	if s == nil {
		return dns.Stats{}, false
	}
	return s.Stats(), true
}
