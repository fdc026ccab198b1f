package overlay

import "encoding/binary"

// IP protocol numbers the filter understands.
const (
	protoHopByHop = 0
	protoTCP      = 6
	protoUDP      = 17
	protoRouting  = 43
	protoFragment = 44
	protoICMPv6   = 58
	protoNone     = 59
	protoDstOpts  = 60

	ipv6HeaderLen = 40
	// maxExtHeaders bounds the extension-header walk so that a crafted chain
	// costs a bounded amount of work.
	maxExtHeaders = 8
)

// packetInfo is what the filter reads from one IPv6 packet. It is a value
// type so that parsing does not allocate.
type packetInfo struct {
	src, dst     [16]byte
	proto        uint8  // upper-layer protocol after extension headers
	sport, dport uint16 // ports; ICMPv6 echo identifier in both; else 0
	l4           int    // offset of the upper-layer header, 0 if the walk did not reach one
}

// parseIPv6 reads the addresses, upper-layer protocol and ports of the IPv6
// packet pkt. It reports false for anything that is not a whole, well-formed
// IPv6 packet: wrong version, short header, payload length beyond the buffer.
// Truncated or unknown upper layers are not an error: the flow is keyed by
// protocol with zero ports.
func parseIPv6(pkt []byte, info *packetInfo) bool {
	if len(pkt) < ipv6HeaderLen || pkt[0]>>4 != 6 {
		return false
	}
	end := int(binary.BigEndian.Uint16(pkt[4:6])) + ipv6HeaderLen
	if end > len(pkt) {
		return false
	}
	pkt = pkt[:end] // bytes past the payload length are link padding
	copy(info.src[:], pkt[8:24])
	copy(info.dst[:], pkt[24:40])
	info.sport, info.dport, info.l4 = 0, 0, 0
	next := pkt[6]
	off := ipv6HeaderLen
walk:
	for range maxExtHeaders {
		switch next {
		case protoHopByHop, protoRouting, protoDstOpts:
			if off+8 > len(pkt) {
				info.proto = next
				return true
			}
			next, off = pkt[off], off+(int(pkt[off+1])+1)*8
		case protoFragment:
			if off+8 > len(pkt) {
				info.proto = next
				return true
			}
			fragOffset := binary.BigEndian.Uint16(pkt[off+2:off+4]) >> 3
			next, off = pkt[off], off+8
			if fragOffset != 0 {
				// A later fragment carries no upper-layer header.
				info.proto = next
				return true
			}
		default:
			break walk
		}
	}
	info.proto = next
	if off > len(pkt) {
		return true
	}
	l4 := pkt[off:]
	info.l4 = off
	switch next {
	case protoTCP, protoUDP:
		if len(l4) >= 4 {
			info.sport = binary.BigEndian.Uint16(l4[0:2])
			info.dport = binary.BigEndian.Uint16(l4[2:4])
		}
	case protoICMPv6:
		// Echo request (128) and reply (129): the identifier names the flow.
		if len(l4) >= 6 && (l4[0] == 128 || l4[0] == 129) {
			id := binary.BigEndian.Uint16(l4[4:6])
			info.sport, info.dport = id, id
		}
	}
	return true
}
