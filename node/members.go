package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node/membership"
	"github.com/agent6/agent6/overlay"
)

// Member is one agent this node knows through membership.
type Member = membership.Member

// peerTable is the WireGuard device as membership drives it.
type peerTable struct{ dev *overlay.Device }

func (t peerTable) SetPeer(key identity.WGPublicKey, ep netip.AddrPort, extra []netip.Prefix) error {
	allowed := append([]netip.Prefix{netip.PrefixFrom(key.Addr(), 128)}, extra...)
	return t.dev.SetPeer(overlay.PeerConfig{PublicKey: key, Endpoint: ep, AllowedIPs: allowed})
}

func (t peerTable) AllowTask(key identity.WGPublicKey, task netip.Addr, allow bool) error {
	return t.dev.SetAllowedIP(key, netip.PrefixFrom(task, 128), allow)
}

func (t peerTable) RemovePeer(key identity.WGPublicKey) error { return t.dev.RemovePeer(key) }

func (t peerTable) Received() (map[identity.WGPublicKey]uint64, error) {
	peers, err := t.dev.Peers()
	if err != nil {
		return nil, err
	}
	rx := make(map[identity.WGPublicKey]uint64, len(peers))
	for _, p := range peers {
		rx[p.PublicKey] = p.RxBytes
	}
	return rx, nil
}

func (t peerTable) Await(addr netip.Addr) { t.dev.Filter().Await(addr) }

func (t peerTable) EndAwait(addr netip.Addr, deliver bool) { t.dev.Filter().EndAwait(addr, deliver) }

// overlayNet is the node's sockets, usable before Up returns.
type overlayNet struct{ n *Node }

func (o overlayNet) ListenPacket(network, address string) (net.PacketConn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, err
	}
	return o.n.listenPacket(network, ap)
}

func (o overlayNet) Listen(network, address string) (net.Listener, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, err
	}
	return o.n.listen(network, ap)
}

func (o overlayNet) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, err
	}
	return o.n.dial(ctx, network, ap)
}

// startMembership starts gossip; called from up with n.mu held.
func (n *Node) startMembership(port uint16, mtu int) error {
	eps, err := n.endpoints(port)
	if err != nil {
		return err
	}
	m, err := membership.New(membership.Config{
		Key:        n.key,
		Credential: n.Credential,
		Card:       n.Card,
		Bundle:     n.Bundle,
		Endpoints:  eps,
		Port:       n.GossipPort,
		MTU:        mtu,
		Network:    overlayNet{n},
		Peers:      peerTable{n.dev},
		Control:    n.bind,
		Logger:     n.log,
		Tune:       n.TuneGossip,

		ReconnectInterval: n.ReconnectInterval,
		OnPeerRemoved:     n.forgetPeer,
		StateDir:          n.Dir,
		MaxTasksPerPeer:   n.MaxTasksPerPeer,
	})
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	n.bind.SetControlHandler(m.HandleControl)
	if err := m.Start(); err != nil {
		n.bind.SetControlHandler(nil)
		return fmt.Errorf("node: %w", err)
	}
	n.members = m
	return nil
}

// endpoints returns the advertised UDP endpoints.
func (n *Node) endpoints(port uint16) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, ep := range n.Endpoints {
		if ep.Port() == 0 {
			ep = netip.AddrPortFrom(ep.Addr(), port)
		}
		out = append(out, ep)
	}
	if len(out) > 0 {
		return out, nil
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("node: list interface addresses: %w", err)
	}
	var loopback []netip.AddrPort
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pfx.Addr().Unmap()
		switch {
		case identity.IsOverlay(ip), ip.IsLinkLocalUnicast(), ip.IsMulticast(), ip.IsUnspecified():
		case ip.IsLoopback():
			loopback = append(loopback, netip.AddrPortFrom(ip, port))
		default:
			out = append(out, netip.AddrPortFrom(ip, port))
		}
	}
	if len(out) == 0 {
		out = loopback
	}
	return out, nil
}

func (n *Node) joinLoop(ctx context.Context) {
	if len(n.tokens) == 0 {
		close(n.joined)
		return
	}
	if err := n.members.Join(ctx, n.tokens); err != nil {
		if !errors.Is(err, context.Canceled) {
			n.log.Error("join failed", "err", err)
		}
		return
	}
	n.log.Info("joined")
	close(n.joined)
}

// Joined returns a channel closed once the node has joined the cluster
// through one of its Join tokens (at once for a node with none).
func (n *Node) Joined() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.joined == nil {
		n.joined = make(chan struct{})
	}
	return n.joined
}

// Members returns the agents this node knows through membership: admitted
// peers and those it refused or lost, with their state.
func (n *Node) Members() []Member {
	n.mu.Lock()
	m := n.members
	n.mu.Unlock()
	if m == nil {
		return nil
	}
	return m.Members()
}

// Membership returns the node's membership, or nil if it runs without.
func (n *Node) Membership() *membership.Membership {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.members
}

// Revoke applies a CA-signed revocation (its SignedRecord encoding):
// matching peers are removed here, and gossip spreads it to every node.
func (n *Node) Revoke(raw []byte) (*identity.Revocation, error) {
	m := n.Membership()
	if m == nil {
		return nil, errors.New("node: revoke: this node runs without membership")
	}
	return m.Revoke(raw)
}

// Invite returns a join token for this node: its WireGuard key and its
// first advertised endpoint.
func (n *Node) Invite() (string, error) {
	dev, err := n.running()
	if err != nil {
		return "", fmt.Errorf("node: invite: %w", err)
	}
	port, err := dev.ListenPort()
	if err != nil {
		return "", err
	}
	eps, err := n.endpoints(port)
	if err != nil {
		return "", err
	}
	if len(eps) == 0 {
		return "", errors.New("node: invite: no endpoint to advertise; set Endpoints")
	}
	return membership.Token{Key: n.PublicKey(), Endpoint: eps[0]}.String(), nil
}
