package node

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/agent6/agent6/identity"
)

// Status is a node's view of itself and its peers. It is the body of the
// LocalAPI's GET /v1/status.
type Status struct {
	Addr       netip.Addr           `json:"address"`
	PublicKey  identity.WGPublicKey `json:"public_key"`
	AgentKey   identity.PublicKey   `json:"agent_key"`
	ListenPort uint16               `json:"listen_port"`
	Mode       string               `json:"mode"` // "embedded" or "tun"
	TUN        string               `json:"tun,omitempty"`
	Peers      []PeerStatus         `json:"peers"`
	Filter     FilterStatus         `json:"filter"`
	// Handshakes counts what the node did to keep first WireGuard
	// handshakes from waiting for the 5 s retry.
	Handshakes HandshakeStatus `json:"handshakes"`
	// Netstack, in embedded mode, are the userspace stack's counters.
	Netstack *NetstackStatus `json:"netstack,omitempty"`
	// Membership, when the node runs it.
	Membership *MembershipStatus `json:"membership,omitempty"`
}

// MembershipStatus summarises the node's membership.
type MembershipStatus struct {
	SPIFFEID     string            `json:"spiffe_id"`
	TrustDomain  string            `json:"trust_domain"`
	TrustDomains []string          `json:"trust_domains"` // accepted
	Members      int               `json:"members"`       // admitted peers
	Joined       bool              `json:"joined"`
	Refused      map[string]uint64 `json:"refused"` // by reason
	// CatchUps counts push/pulls that repair what gossip lost: with an
	// admitted peer whose alive message never arrived, or with a peer
	// declared dead a second before.
	CatchUps uint64 `json:"catch_ups"`
	// DeathsOverruled counts peers memberlist declared dead that were kept
	// because WireGuard kept receiving from them.
	DeathsOverruled uint64 `json:"deaths_overruled"`
	// Revoked is set once this node learnt that its own credential is
	// revoked (from a peer that refused it, with the CA-signed revocation,
	// or from gossip): peers refuse it and it has stopped joining.
	Revoked *RevokedStatus `json:"revoked,omitempty"`
}

// RevokedStatus is the revocation of this node's own credential.
type RevokedStatus struct {
	Serial    string    `json:"serial"`
	RevokedAt time.Time `json:"revoked_at"`
}

// PeerStatus is one peer as the WireGuard device sees it.
type PeerStatus struct {
	PublicKey     identity.WGPublicKey `json:"public_key"`
	Addr          netip.Addr           `json:"address"`
	Endpoint      netip.AddrPort       `json:"endpoint"` // "" until known
	LastHandshake *time.Time           `json:"last_handshake,omitempty"`
	RxBytes       uint64               `json:"rx_bytes"`
	TxBytes       uint64               `json:"tx_bytes"`
}

// FilterStatus are the packet filter's counters.
type FilterStatus struct {
	InPackets   uint64            `json:"in_packets"`
	InBytes     uint64            `json:"in_bytes"`
	OutPackets  uint64            `json:"out_packets"`
	OutBytes    uint64            `json:"out_bytes"`
	ActiveFlows int               `json:"active_flows"`
	Untracked   uint64            `json:"untracked_packets"`
	Held        uint64            `json:"held_packets"`
	Drops       map[string]uint64 `json:"drops"`
	// As a waypoint: packets and bytes forwarded, flows forwarded now.
	Forwarded      uint64 `json:"forwarded_packets"`
	ForwardedBytes uint64 `json:"forwarded_bytes"`
	TransitFlows   int    `json:"transit_flows"`
	// ICMPv6 errors sent to the local stack (Packet Too Big,
	// administratively prohibited), and those not sent (rate limit, or
	// the queue to the local stack full).
	ICMPErrors  uint64 `json:"icmp_errors"`
	ICMPLimited uint64 `json:"icmp_limited"`
}

// HandshakeStatus counts (see overlay.HandshakeStats) the handshakes
// this node and a peer started at once: the peer's initiation held while
// this node's awaited its response, then dropped when the response came
// (CrossAnswered) or delivered when it did not come in time
// (CrossReleased); or this node's held while WireGuard had the peer's to
// answer, then dropped when it answered (CrossSuperseded) or sent when it
// did not (CrossSentLate). And the initiations that arrived before their
// peer was admitted, handed to WireGuard again once it was (Redelivered).
type HandshakeStatus struct {
	CrossHeld       uint64 `json:"crossed_held"`
	CrossAnswered   uint64 `json:"crossed_answered"`
	CrossReleased   uint64 `json:"crossed_released"`
	CrossSuperseded uint64 `json:"crossed_superseded"`
	CrossSentLate   uint64 `json:"crossed_sent_late"`
	Redelivered     uint64 `json:"redelivered"`
}

// Plus returns the counts of h and o added, for totals over nodes.
func (h HandshakeStatus) Plus(o HandshakeStatus) HandshakeStatus {
	return HandshakeStatus{
		CrossHeld:       h.CrossHeld + o.CrossHeld,
		CrossAnswered:   h.CrossAnswered + o.CrossAnswered,
		CrossReleased:   h.CrossReleased + o.CrossReleased,
		CrossSuperseded: h.CrossSuperseded + o.CrossSuperseded,
		CrossSentLate:   h.CrossSentLate + o.CrossSentLate,
		Redelivered:     h.Redelivered + o.Redelivered,
	}
}

// NetstackStatus are the embedded stack's counters of traffic it could
// not deliver or sent again (see overlay.NetstackStats).
type NetstackStatus struct {
	UDPReceiveBufferDrops uint64 `json:"udp_receive_buffer_drops"`
	UDPUnknownPort        uint64 `json:"udp_unknown_port"`
	TCPRetransmits        uint64 `json:"tcp_retransmits"`
}

// Status reports the node's state.
func (n *Node) Status() (Status, error) {
	dev, err := n.running()
	if err != nil {
		return Status{}, fmt.Errorf("node: status: %w", err)
	}
	port, err := dev.ListenPort()
	if err != nil {
		return Status{}, err
	}
	peers, err := dev.Peers()
	if err != nil {
		return Status{}, err
	}
	st := Status{
		Addr:       n.Addr(),
		PublicKey:  n.PublicKey(),
		AgentKey:   n.AgentKey(),
		ListenPort: port,
		Mode:       n.mode(),
		TUN:        n.TUN,
		Peers:      make([]PeerStatus, 0, len(peers)),
	}
	for _, p := range peers {
		ps := PeerStatus{PublicKey: p.PublicKey, Addr: p.Addr, Endpoint: p.Endpoint, RxBytes: p.RxBytes, TxBytes: p.TxBytes}
		if !p.LastHandshake.IsZero() {
			t := p.LastHandshake
			ps.LastHandshake = &t
		}
		st.Peers = append(st.Peers, ps)
	}
	fs := dev.Filter().Stats()
	st.Filter = FilterStatus(fs)
	st.Handshakes = HandshakeStatus(n.bind.HandshakeStats())
	if n.tnet != nil { // set before running() reports the node up, never changed
		ns := NetstackStatus(n.tnet.Stats())
		st.Netstack = &ns
	}
	if m := n.Membership(); m != nil {
		ms := m.Stats()
		st.Membership = &MembershipStatus{
			SPIFFEID:     m.Credential().ID,
			TrustDomain:  m.Credential().TrustDomain,
			TrustDomains: m.TrustDomains(),
			Members:      ms.Members,
			CatchUps:     ms.CatchUps,

			DeathsOverruled: ms.DeathsOverruled,
			Refused:         make(map[string]uint64, len(ms.Refused)),
		}
		for r, c := range ms.Refused {
			st.Membership.Refused[string(r)] = c
		}
		if rev := ms.Revoked; rev != nil {
			st.Membership.Revoked = &RevokedStatus{Serial: rev.Serial, RevokedAt: rev.RevokedAt}
		}
		select {
		case <-n.Joined():
			st.Membership.Joined = ms.Revoked == nil // a revoked node is out, whatever it joined
		default:
		}
	}
	return st, nil
}
