package overlay

import (
	"errors"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/agent6/agent6/identity"
)

// Waypoint is one hop a flow must cross: an agent, by its address and
// WireGuard key (the address must be the key's).
type Waypoint struct {
	Addr netip.Addr
	Key  identity.WGPublicKey
}

// Tuple names a flow as its packets carry it: the inner packet's source
// and destination with their ports, and the upper-layer protocol. An
// ICMPv6 echo carries its identifier as both ports; other protocols, and
// fragments after the first, carry zero ports.
type Tuple struct {
	Src, Dst netip.AddrPort
	Proto    uint8
}

func tupleOf(info *packetInfo) Tuple {
	return Tuple{
		Src:   netip.AddrPortFrom(netip.AddrFrom16(info.src), info.sport),
		Dst:   netip.AddrPortFrom(netip.AddrFrom16(info.dst), info.dport),
		Proto: info.proto,
	}
}

// ErrNoWaypoint is what Via.Outbound returns for a flow that must cross
// waypoints none of which is reachable: the flow fails closed.
var ErrNoWaypoint = errors.New("overlay: no waypoint reachable")

// Via says which flows must cross which waypoints: policy's answer,
// given to the filter. The filter asks once per flow and direction and
// keeps the answer in the flow's entry, so an established flow costs no
// call; ResetVia makes every flow ask again at its next packet (policy
// changed, a waypoint died). The methods are called from the packet path,
// with no lock of the filter held: they must not block, and must be safe
// for concurrent use. The filter copies what they return.
type Via interface {
	// Outbound returns the waypoints, in the order they must be crossed,
	// of the flow t that this node starts sending; none sends it directly.
	// An error (ErrNoWaypoint) refuses the flow: its packets are dropped
	// as no_waypoint and the local stack is told at once with ICMPv6
	// "administratively prohibited".
	Outbound(t Tuple) ([]Waypoint, error)
	// Inbound returns the waypoints, in order, that the flow t arriving at
	// this node must have crossed; none requires none. A packet of the
	// flow that arrives directly or without one of them is dropped as
	// waypoint_bypassed, one that crossed them in another order as
	// waypoint_order, one whose proof of transit fails as transit_proof.
	Inbound(t Tuple) []Waypoint
}

// Verdict is an inspection hook's answer for a flow crossing this node as
// a waypoint; it says what happens to the packet at hand and to the rest
// of the flow.
type Verdict uint8

const (
	// VerdictPass forwards the packet and the rest of the flow, without
	// asking again.
	VerdictPass Verdict = iota
	// VerdictInspect forwards the packet and asks InspectPacket about
	// each that follows.
	VerdictInspect
	// VerdictDropPacket drops the packet and asks about each that
	// follows.
	VerdictDropPacket
	// VerdictDrop drops the packet and the rest of the flow.
	VerdictDrop
)

var verdictNames = [...]string{"pass", "inspect", "drop_packet", "drop"}

func (v Verdict) String() string {
	if int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return "unknown"
}

// TransitFlow is a flow crossing this node as a waypoint, as an
// inspection hook sees it.
type TransitFlow struct {
	// Flow is the inner flow in the direction of its first packet here.
	Flow Tuple
	// Reverse is set for a packet going the other way (Flow.Dst to
	// Flow.Src).
	Reverse bool
	// Prev and Next are the hops the packet came from and goes to.
	Prev, Next netip.Addr
	// Hop is this waypoint's position in the packet's path (0 is the
	// first waypoint) and Hops the number of waypoints in it.
	Hop, Hops int
}

// Inspector is a waypoint's inspection hook: a Go program that embeds a
// node writes an inspection service by implementing it. The methods are
// called from the packet path, with no lock of the filter held; they must
// not block for long (the packets behind wait), and must be safe for
// concurrent use.
type Inspector interface {
	// InspectFlow is asked about each new flow this node forwards;
	// VerdictInspect asks InspectPacket about every packet.
	InspectFlow(f TransitFlow) Verdict
	// InspectPacket is asked about each packet of a flow under
	// inspection. pkt is the inner packet: read-only, and valid only
	// during the call.
	InspectPacket(f TransitFlow, pkt []byte) Verdict
}

// Transit makes a node a waypoint: it forwards the SRv6 packets whose
// active segment it is, stamping each with its proof of transit.
type Transit struct {
	// Inspector, if set, is asked about each flow (and, if it wants,
	// each packet); nil forwards every flow.
	Inspector Inspector
	// OnReceipt, if set, receives each transit flow's receipt when the
	// flow ends (idle, or at Close), from the filter's sweeper goroutine.
	// It must not block.
	OnReceipt func(Receipt)
	// Sign signs receipts: the agent's Ed25519 key (identity.PrivateKey's
	// Sign). Nil leaves them unsigned.
	Sign func(msg []byte) []byte
}

// outRoute is the cached answer of Via.Outbound for one flow.
type outRoute struct {
	gen    uint64
	refuse bool     // no waypoint: drop, tell the local stack
	hdr    []byte   // SRv6 header template; nil sends directly
	wps    int      // waypoints
	max    int      // the largest inner packet sent through them
	mss    uint16   // TCP MSS clamp
	seq    seqCount // the flow's proof-of-transit sequence
}

// inRoute is the cached answer of Via.Inbound for one flow.
type inRoute struct {
	gen  uint64
	need [][16]byte // waypoint addresses, in order
	keys []identity.WGPublicKey
	pot  []*potKey // their transit-proof keys with this node, nil if unknown
}

// seqCount hands out a flow's sequence numbers. They start at the wall
// clock in nanoseconds when the flow's route is made, so that a flow
// restarted after its entry expired (here, or a restarted node) starts
// above the numbers the destination saw last, and its replay window takes
// them.
type seqCount struct{ n atomic.Uint64 }

func (s *seqCount) init()        { s.n.Store(uint64(time.Now().UnixNano())) }
func (s *seqCount) next() uint64 { return s.n.Add(1) }
