package overlay

import (
	"encoding/binary"
	"errors"
)

// SRv6 as Agent6 carries it inside WireGuard (RFC 8754, behaviours after
// RFC 8986; docs/srv6.md has the picture):
//
//	outer IPv6   next header 43, source = the previous hop, destination = the active segment
//	SRH          next header 41, routing type 4, segments left, last entry = n-1,
//	             Segment List[0] = destination, [1] = last waypoint, ..., [n-1] = first waypoint,
//	             then one proof-of-transit TLV (type 252) with a stamp slot per waypoint
//	inner IPv6   the packet the source's stack sent, untouched
//
// The source encapsulates (H.Encaps, outer source = the inner source);
// each waypoint checks the packet came from the previous hop, stamps its
// slot, decrements segments left and sends it on with itself as outer
// source (End, with the outer header re-made); the destination checks the
// chain and delivers the inner packet alone (End.DT6).

const (
	// srhRoutingType is the Segment Routing Header's routing type.
	srhRoutingType = 4
	// protoIPv6 is the next-header value of an encapsulated IPv6 packet.
	protoIPv6 = 41
	// srhFixedLen is the SRH's fixed part, before the segment list.
	srhFixedLen = 8
	// outerHopLimit is the hop limit of the outer header the source makes.
	outerHopLimit = 64

	tlvPad1 = 0
	tlvPadN = 4
	// TLVTypeTransitProof is the SRH TLV type of Agent6's ordered proof of
	// transit: 252, the first of RFC 8754's "Experimentation and Test"
	// codepoints among those whose data may change en route (each
	// waypoint fills in its stamp).
	TLVTypeTransitProof = 252
	// potVersion is the version byte of the proof-of-transit TLV.
	potVersion = 1
	// potFixedLen is the TLV's data before the stamps: version, hop
	// count, four reserved bytes, the 8-byte sequence.
	potFixedLen = 14
	// stampLen is the size of one waypoint's stamp.
	stampLen = 16

	// MaxWaypoints bounds the waypoints of one path.
	MaxWaypoints = 8
)

// Reasons an SRv6 packet is refused as malformed. Sentinels, so that
// refusing one costs no allocation.
var (
	errSRHShort         = errors.New("overlay: srv6: shorter than its headers")
	errSRHNotSRH        = errors.New("overlay: srv6: no segment routing header after the IPv6 header")
	errSRHLength        = errors.New("overlay: srv6: header length beyond the packet")
	errSRHNextHeader    = errors.New("overlay: srv6: next header is not IPv6")
	errSRHLastEntry     = errors.New("overlay: srv6: last entry out of range")
	errSRHSegmentsLeft  = errors.New("overlay: srv6: segments left beyond the segment list")
	errSRHActiveSegment = errors.New("overlay: srv6: destination is not the active segment")
	errSRHTLV           = errors.New("overlay: srv6: malformed TLV")
	errSRHPadding       = errors.New("overlay: srv6: bad TLV padding")
	errSRHProof         = errors.New("overlay: srv6: missing or malformed proof-of-transit TLV")
	errSRHInner         = errors.New("overlay: srv6: inner packet malformed or not filling the payload")
	errSRHFinalSegment  = errors.New("overlay: srv6: final segment is not the inner destination")
)

// srv6Overhead is what encapsulation adds for k waypoints: the outer
// header, the SRH's fixed part, n = k+1 segments of 16 bytes and the
// proof-of-transit TLV (2 + 14 + 16k bytes = 16n), so 48 + 32n bytes,
// always a multiple of 8 with no padding.
func srv6Overhead(k int) int { return ipv6HeaderLen + srhFixedLen + 32*(k+1) }

// srv6View is a decoded Agent6 SRv6 packet: offsets into the packet, so
// that decoding neither copies nor allocates. The SRH sits right after the
// outer header, at offset 40.
type srv6View struct {
	pkt    []byte // the packet, trimmed to its payload length
	n      int    // segments: the waypoints and the destination
	sl     int    // segments left
	stamps int    // offset of stamp 0 in pkt
	seqOff int    // offset of the sequence number in pkt
	inner  int    // offset of the inner packet in pkt
	info   packetInfo
}

// segment returns Segment List[i].
func (v *srv6View) segment(i int) []byte {
	off := ipv6HeaderLen + srhFixedLen + 16*i
	return v.pkt[off : off+16]
}

// waypoints is the number of waypoints in the path.
func (v *srv6View) waypoints() int { return v.n - 1 }

// waypoint returns the j-th waypoint in path order (0 is the first the
// packet crosses), which is Segment List[n-1-j].
func (v *srv6View) waypoint(j int) []byte { return v.segment(v.n - 1 - j) }

// stamp returns the j-th waypoint's stamp slot.
func (v *srv6View) stamp(j int) []byte {
	off := v.stamps + stampLen*j
	return v.pkt[off : off+stampLen]
}

// seq returns the packet's proof-of-transit sequence number.
func (v *srv6View) seq() uint64 { return binary.BigEndian.Uint64(v.pkt[v.seqOff:]) }

// hop returns the index, in path order, of the waypoint the packet is
// addressed to now (segments left n-1 is the first waypoint).
func (v *srv6View) hop() int { return v.n - 1 - v.sl }

// isSRv6 reports whether pkt (a parsed IPv6 packet) carries a Segment
// Routing Header right after its IPv6 header: the one layout Agent6 uses.
func isSRv6(pkt []byte) bool {
	return len(pkt) > ipv6HeaderLen+2 && pkt[6] == protoRouting && pkt[ipv6HeaderLen+2] == srhRoutingType
}

// parseSRv6 decodes pkt as an Agent6 SRv6 packet, strictly: an IPv6
// header, then the SRH (next header 41, routing type 4, at most
// MaxWaypoints+1 segments, segments left within them, the destination
// address equal to the active segment, the final segment equal to the
// inner packet's destination), whose TLVs are exactly one
// proof-of-transit TLV with one stamp slot per waypoint and at most one
// padding TLV of zeros aligning the header, then a well-formed inner IPv6
// packet filling the rest of the payload exactly. Unknown TLV types are
// skipped, as RFC 8754 asks, if their lengths hold.
func parseSRv6(pkt []byte, v *srv6View) error {
	if len(pkt) < ipv6HeaderLen+srhFixedLen || pkt[0]>>4 != 6 {
		return errSRHShort
	}
	end := ipv6HeaderLen + int(binary.BigEndian.Uint16(pkt[4:6]))
	if end > len(pkt) || end < ipv6HeaderLen+srhFixedLen {
		return errSRHShort
	}
	pkt = pkt[:end]
	if pkt[6] != protoRouting || pkt[ipv6HeaderLen+2] != srhRoutingType {
		return errSRHNotSRH
	}
	h := pkt[ipv6HeaderLen:]
	srhLen := 8 * (int(h[1]) + 1)
	if srhLen > len(h) {
		return errSRHLength
	}
	if h[0] != protoIPv6 {
		return errSRHNextHeader
	}
	n := int(h[4]) + 1
	if n > MaxWaypoints+1 || srhFixedLen+16*n > srhLen {
		return errSRHLastEntry
	}
	sl := int(h[3])
	if sl >= n {
		return errSRHSegmentsLeft
	}
	v.pkt, v.n, v.sl = pkt, n, sl
	if string(v.segment(sl)) != string(pkt[24:40]) {
		return errSRHActiveSegment
	}
	// TLVs: from the end of the segment list to the end of the SRH.
	v.stamps = -1
	padding := 0
	for off := srhFixedLen + 16*n; off < srhLen; {
		typ := h[off]
		if typ == tlvPad1 {
			padding++
			off++
			if padding > 7 {
				return errSRHPadding
			}
			continue
		}
		if off+2 > srhLen {
			return errSRHTLV
		}
		l := int(h[off+1])
		data := off + 2
		if data+l > srhLen {
			return errSRHTLV
		}
		switch typ {
		case tlvPadN:
			padding += 2 + l
			if padding > 7 {
				return errSRHPadding
			}
			for _, b := range h[data : data+l] {
				if b != 0 {
					return errSRHPadding
				}
			}
		case TLVTypeTransitProof:
			k := n - 1
			if v.stamps >= 0 || l != potFixedLen+stampLen*k || h[data] != potVersion || int(h[data+1]) != k ||
				h[data+2]|h[data+3]|h[data+4]|h[data+5] != 0 {
				return errSRHProof
			}
			v.seqOff = ipv6HeaderLen + data + 6
			v.stamps = ipv6HeaderLen + data + potFixedLen
		}
		off = data + l
	}
	if v.stamps < 0 {
		return errSRHProof
	}
	v.inner = ipv6HeaderLen + srhLen
	inner := pkt[v.inner:]
	if !parseIPv6(inner, &v.info) || ipv6HeaderLen+int(binary.BigEndian.Uint16(inner[4:6])) != len(inner) {
		return errSRHInner
	}
	if string(v.segment(0)) != string(v.info.dst[:]) {
		return errSRHFinalSegment
	}
	return nil
}

// writeSRv6Header writes the outer IPv6 header and SRH that carry a
// packet of the flow src → dst through the waypoints wps (in path order),
// into h, which must be srv6Overhead(len(wps)) bytes long. The payload
// length, traffic class, flow label and sequence number are left for
// encapsulate to set per packet; the stamp slots are zero.
func writeSRv6Header(h []byte, src, dst [16]byte, wps [][16]byte) {
	clear(h)
	n := len(wps) + 1
	srhLen := srhFixedLen + 32*n
	h[0] = 6 << 4
	h[6] = protoRouting
	h[7] = outerHopLimit
	copy(h[8:24], src[:])
	copy(h[24:40], wps[0][:]) // the first waypoint is the first active segment
	s := h[ipv6HeaderLen:]
	s[0] = protoIPv6
	s[1] = byte(srhLen/8 - 1)
	s[2] = srhRoutingType
	s[3] = byte(n - 1) // segments left
	s[4] = byte(n - 1) // last entry
	copy(s[srhFixedLen:], dst[:])
	for j, w := range wps {
		copy(s[srhFixedLen+16*(n-1-j):], w[:])
	}
	t := s[srhFixedLen+16*n:]
	t[0] = TLVTypeTransitProof
	t[1] = byte(potFixedLen + stampLen*len(wps))
	t[2] = potVersion
	t[3] = byte(len(wps))
}

// encapsulate turns the inner packet at buf[off:off+size] into an SRv6
// packet in place, moving it back by len(hdr) bytes and writing the
// header template hdr (from writeSRv6Header) in front, with the inner
// packet's traffic class and flow label, its payload length, and seq. It
// returns the new size; buf must have room for it.
func encapsulate(buf []byte, off, size int, hdr []byte, seq uint64) int {
	h := len(hdr)
	copy(buf[off+h:off+h+size], buf[off:off+size])
	copy(buf[off:off+h], hdr)
	out := buf[off:]
	inner := out[h:]
	// Version, traffic class and flow label come from the inner header
	// (RFC 2473 §6.4 copies the class; the flow label identifies the flow
	// for ECMP on any hop that looks).
	copy(out[0:4], inner[0:4])
	binary.BigEndian.PutUint16(out[4:6], uint16(h-ipv6HeaderLen+size))
	n := int(out[ipv6HeaderLen+4]) + 1
	binary.BigEndian.PutUint64(out[ipv6HeaderLen+srhFixedLen+16*n+2+6:], seq)
	return h + size
}
