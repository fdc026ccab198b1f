package node

import (
	"context"
	"fmt"
	"io"
	"net/netip"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/overlay"
)

// Waypoint makes a node serve as a waypoint: it forwards the SRv6 packets
// whose next segment it is, after checking that each came from the
// previous hop's WireGuard session, and stamps each with its proof of
// transit for the destination to verify (see docs/srv6.md).
type Waypoint struct {
	// Inspector, if set, is asked about each flow this node forwards, and
	// about each of its packets if it wants: a Go program writes an
	// inspection service this way. Nil forwards every flow.
	Inspector overlay.Inspector
	// OnReceipt, if set, receives the receipt of each flow this node
	// forwarded, signed with the agent key, when the flow ends (idle for
	// two minutes, or at Close). It must not block.
	OnReceipt func(overlay.Receipt)
}

// transit is the filter's waypoint configuration: receipts are signed
// with the agent key.
func (n *Node) transit(key identity.PrivateKey) *overlay.Transit {
	if n.Waypoint == nil {
		return nil
	}
	return &overlay.Transit{Inspector: n.Waypoint.Inspector, OnReceipt: n.Waypoint.OnReceipt, Sign: key.Sign}
}

// TransitFlows returns the flows this node forwards as a waypoint, with
// what it forwarded of each.
func (n *Node) TransitFlows() ([]overlay.TransitStats, error) {
	dev, err := n.running()
	if err != nil {
		return nil, fmt.Errorf("node: transit flows: %w", err)
	}
	return dev.Filter().TransitFlows(), nil
}

// ResetVia makes every flow ask Via again at its next packet: call it
// when Via's answers changed (a waypoint died, policy changed).
func (n *Node) ResetVia() error {
	dev, err := n.running()
	if err != nil {
		return fmt.Errorf("node: reset via: %w", err)
	}
	dev.Filter().ResetVia()
	return nil
}

// CaptureStats counts what a capture wrote and what it dropped because
// its writer fell behind.
type CaptureStats = overlay.CaptureStats

// Capture writes a pcap stream (LINKTYPE_RAW, nanosecond timestamps) of
// the plaintext overlay packets as they enter and leave WireGuard, both
// directions, SRv6 headers included, to w until ctx ends. With peer set,
// only the packets to or from that overlay address (outer or
// encapsulated) are kept. The packet path never waits for w: when w falls
// behind, packets are dropped and counted. tcpdump, tshark and Wireshark
// read the stream.
func (n *Node) Capture(ctx context.Context, w io.Writer, peer netip.Addr) (CaptureStats, error) {
	dev, err := n.running()
	if err != nil {
		return CaptureStats{}, fmt.Errorf("node: capture: %w", err)
	}
	if peer.IsValid() && !identity.IsOverlay(peer) {
		return CaptureStats{}, fmt.Errorf("node: capture: %w: %s", ErrNotOverlay, peer)
	}
	st, err := dev.Filter().Capture(ctx, w, overlay.CaptureConfig{Peer: peer})
	if err != nil {
		return st, fmt.Errorf("node: %w", err)
	}
	return st, nil
}
