package overlay

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// An ICMPv6 error quotes what fits in 1280 bytes, and carries a valid
// checksum; gVisor gets "administratively prohibited" as "no route", with
// the checksum still valid.
func TestICMPv6Error(t *testing.T) {
	a, d := netip.MustParseAddr("2001:21::a"), netip.MustParseAddr("2001:21::d")
	for _, n := range []int{0, 100, 1280, 9000} {
		inv := udp6(a, d, 1, 2, n)
		p := ICMPv6Error(d, ICMPv6DestUnreachable, ICMPv6CodeProhibited, 0, inv)
		checkICMP(t, p, d, a, ICMPv6DestUnreachable, ICMPv6CodeProhibited, 0, inv)
		prohibitedToNoRoute(p)
		checkICMP(t, p, d, a, ICMPv6DestUnreachable, 0, 0, inv)
	}
	if ICMPv6Error(d, 1, 1, 0, []byte{0x60}) != nil {
		t.Fatal("an error about a packet shorter than its header")
	}
	// Other ICMPv6 messages pass unchanged.
	p := ICMPv6Error(d, ICMPv6PacketTooBig, 0, 1280, udp6(a, d, 1, 2, 10))
	q := append([]byte(nil), p...)
	prohibitedToNoRoute(q)
	if string(p) != string(q) {
		t.Fatal("a Packet Too Big was changed")
	}
}

func TestClampMSS(t *testing.T) {
	a, d := netip.MustParseAddr("2001:21::a"), netip.MustParseAddr("2001:21::d")
	syn := tcp6(a, d, 1, 2, 0x02, 1360, 0)
	var info packetInfo
	parseIPv6(syn, &info)
	if !clampMSS(syn, info.l4, 1220) {
		t.Fatal("SYN not clamped")
	}
	checkMSS(t, syn, 1220)
	if clampMSS(syn, info.l4, 1300) {
		t.Fatal("raised an MSS")
	}
	ack := tcp6(a, d, 1, 2, 0x10, 0, 10)
	if clampMSS(ack, info.l4, 1000) {
		t.Fatal("clamped a segment that is no SYN")
	}
	// The MSS option after a single no-op sits at an odd offset; and
	// options cut short are left alone.
	odd := make([]byte, 40+28)
	copy(odd, syn[:40])
	binary.BigEndian.PutUint16(odd[4:], 28)
	copy(odd[40:60], syn[40:60])
	odd[40+12] = 7 << 4
	copy(odd[60:], []byte{1, 2, 4, 0x05, 0x50, 1, 1, 0})
	seg := odd[40:]
	seg[16], seg[17] = 0, 0
	binary.BigEndian.PutUint16(seg[16:], l4Checksum(odd, protoTCP, seg))
	if !clampMSS(odd, 40, 1000) || binary.BigEndian.Uint16(odd[63:]) != 1000 || l4Checksum(odd, protoTCP, odd[40:]) != 0 {
		t.Fatal("MSS at an odd offset not clamped, or the checksum broken")
	}
	cut := append([]byte(nil), odd...)
	cut[61] = 2
	cut[62] = 9 // an option longer than the header
	if clampMSS(cut, 40, 500) {
		t.Fatal("clamped through a malformed option")
	}
}
