package overlay

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"time"
)

// ICMPv6 error types and codes (RFC 4443) the filter sends to the local
// stack.
const (
	ICMPv6DestUnreachable = 1
	ICMPv6PacketTooBig    = 2
	ICMPv6TimeExceeded    = 3
	ICMPv6ParamProblem    = 4

	// ICMPv6CodeProhibited is Destination Unreachable's code 1,
	// "communication with destination administratively prohibited".
	ICMPv6CodeProhibited = 1

	// minMTU is IPv6's minimum link MTU, and the most an ICMPv6 error may
	// take (RFC 4443 §2.4 (c)).
	minMTU = 1280
)

// ICMPv6Error builds an ICMPv6 error message (RFC 4443) about the packet
// invoking, from src to invoking's source: typ and code, and param, the
// 32-bit field after the checksum (the MTU of a Packet Too Big, the
// pointer of a Parameter Problem, otherwise 0). It quotes as much of
// invoking as fits in 1280 bytes, and sets the checksum. It returns nil if
// invoking is shorter than an IPv6 header.
func ICMPv6Error(src netip.Addr, typ, code uint8, param uint32, invoking []byte) []byte {
	if len(invoking) < ipv6HeaderLen || !src.Is6() {
		return nil
	}
	quote := min(len(invoking), minMTU-ipv6HeaderLen-8)
	p := make([]byte, ipv6HeaderLen+8+quote)
	s := src.As16()
	p[0] = 6 << 4
	binary.BigEndian.PutUint16(p[4:], uint16(8+quote))
	p[6] = protoICMPv6
	p[7] = 64
	copy(p[8:24], s[:])
	copy(p[24:40], invoking[8:24])
	m := p[ipv6HeaderLen:]
	m[0], m[1] = typ, code
	binary.BigEndian.PutUint32(m[4:], param)
	copy(m[8:], invoking[:quote])
	binary.BigEndian.PutUint16(m[2:], l4Checksum(p, protoICMPv6, m))
	return p
}

// l4Checksum computes the Internet checksum of the upper-layer message m
// carried in the IPv6 packet p, with p's pseudo-header (RFC 8200 §8.1).
// m's checksum field must be zero.
func l4Checksum(p []byte, proto uint8, m []byte) uint16 {
	var sum uint32
	for i := 8; i < 40; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	sum += uint32(len(m)>>16) + uint32(len(m)&0xffff) + uint32(proto)
	for len(m) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(m))
		m = m[2:]
	}
	if len(m) == 1 {
		sum += uint32(m[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// clampMSS lowers the MSS option of a TCP SYN (or SYN-ACK) in pkt, a
// parsed IPv6 packet whose TCP header is at l4, to mss, and recomputes the
// TCP checksum. Other packets are left alone. It reports whether it
// changed pkt.
func clampMSS(pkt []byte, l4 int, mss uint16) bool {
	end := ipv6HeaderLen + int(binary.BigEndian.Uint16(pkt[4:6]))
	if l4 == 0 || end > len(pkt) || l4+20 > end || pkt[l4+13]&0x02 == 0 { // not a SYN
		return false
	}
	seg := pkt[l4:end]
	doff := int(seg[12]>>4) * 4
	if doff < 20 || doff > len(seg) {
		return false
	}
	opts := seg[20:doff]
	for i := 0; i < len(opts); {
		switch opts[i] {
		case 0: // end of options
			return false
		case 1: // no-op
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 || i+int(opts[i+1]) > len(opts) {
			return false
		}
		if opts[i] == 2 && opts[i+1] == 4 {
			if binary.BigEndian.Uint16(opts[i+2:]) <= mss {
				return false
			}
			binary.BigEndian.PutUint16(opts[i+2:], mss)
			seg[16], seg[17] = 0, 0
			binary.BigEndian.PutUint16(seg[16:], l4Checksum(pkt, protoTCP, seg))
			return true
		}
		i += int(opts[i+1])
	}
	return false
}

// icmpLimiter bounds the ICMPv6 errors the filter sends to the local stack
// (RFC 4443 §2.4 (f)): a token bucket of icmpBurst, refilled at icmpRate
// per second.
type icmpLimiter struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
}

const (
	icmpRate  = 100
	icmpBurst = 50
)

func (l *icmpLimiter) allow(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last.IsZero() {
		l.tokens = icmpBurst
	} else {
		l.tokens = min(icmpBurst, l.tokens+now.Sub(l.last).Seconds()*icmpRate)
	}
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

// localHeadroom is the room left before a packet written to the local
// stack, as wireguard-go leaves it (the Linux TUN writes its virtio header
// there).
const localHeadroom = 16

// SendLocal queues pkt, an IPv6 packet, for delivery to the local stack,
// as though it had come from the overlay. It does not block: it reports
// false, and counts the packet in FilterStats.ICMPLimited, when the
// queue (64 packets) is full. Safe for concurrent use.
func (f *Filter) SendLocal(pkt []byte) bool {
	buf := make([]byte, localHeadroom+len(pkt))
	copy(buf[localHeadroom:], pkt)
	select {
	case f.localQ <- buf:
		return true
	default:
		f.icmpSuppressed.Add(1)
		return false
	}
}

// Prohibit tells the local stack that invoking, a packet it sent, was
// refused: ICMPv6 Destination Unreachable, administratively prohibited,
// from invoking's destination (the one the stack was trying to reach),
// so that a connection fails at once rather than after its retries. The
// errors are rate-limited; it reports false if this one was not sent.
// Safe for concurrent use.
func (f *Filter) Prohibit(invoking []byte) bool {
	return f.icmpError(ICMPv6DestUnreachable, ICMPv6CodeProhibited, 0, invoking)
}

// icmpError sends the local stack an ICMPv6 error about invoking, from
// invoking's destination, if the rate limit allows.
func (f *Filter) icmpError(typ, code uint8, param uint32, invoking []byte) bool {
	if len(invoking) < ipv6HeaderLen {
		return false
	}
	if !f.icmp.allow(time.Now()) {
		f.icmpSuppressed.Add(1)
		return false
	}
	from := netip.AddrFrom16([16]byte(invoking[24:40]))
	if !f.SendLocal(ICMPv6Error(from, typ, code, param, invoking)) {
		return false
	}
	f.icmpSent.Add(1)
	return true
}

// localLoop writes the packets queued by SendLocal to the local stack. It
// runs apart from the packet path, because a netstack's Write may answer
// synchronously and block on the very reader that queued the packet.
func (f *Filter) localLoop() {
	for {
		select {
		case <-f.done:
			return
		case buf := <-f.localQ:
			if _, err := f.inner.Write([][]byte{buf}, localHeadroom); err != nil {
				f.icmpSuppressed.Add(1)
			}
		}
	}
}
