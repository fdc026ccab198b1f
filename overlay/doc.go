// Package overlay owns the Agent6 data plane: the WireGuard device
// (wireguard-go, configured through typed values), its two TUN backends
// (a kernel TUN device for the sidecar, a gVisor netstack for embedded use),
// and the Agent6 filter, a tun.Device wrapper that sits between the backend
// and WireGuard and sees every packet.
//
//	app ── kernel TUN or netstack ── Filter ── wireguard-go ── UDP
//
// The filter refuses outbound packets whose source is not this node and
// inbound packets not addressed to it, and counts every flow. WireGuard's
// cryptokey routing, with each peer's AllowedIPs set to the /128 derived
// from its key, refuses inbound packets whose source does not belong to the
// peer that sent them. Together they make the source address an identity.
//
// The filter also carries path control (docs/srv6.md): given a Via
// hook, it sends the flows that must cross waypoints as SRv6 (srv6.go),
// serves as a waypoint that checks, stamps and forwards them (route.go),
// and at the destination verifies their ordered proof of transit (pot.go)
// before delivering the inner packet alone. Capture (capture.go) copies
// the packets crossing between the filter and WireGuard into a pcap.
//
// Under wireguard-go, Bind is the node's one UDP socket: it hands Agent6
// control frames to membership instead of WireGuard, and keeps first
// handshakes from waiting WireGuard's 5 s retry (handshake.go): two
// peers that initiate at the same moment, which would refuse each other's
// responses, complete one handshake, and an initiation that arrived before
// its peer was added is handed to WireGuard again when it is.
//
// The same socket answers STUN (stun.go) and carries path frames: with
// Paths (paths.go), a peer's WireGuard endpoint is the peer itself and
// each datagram takes its best confirmed path, a direct candidate, a
// member relay (relay.go) or TURN (turn.go); docs/nat.md has the design
// and the wire formats.
package overlay
