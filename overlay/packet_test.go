package overlay

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

func TestParseIPv6ExtensionHeaders(t *testing.T) {
	src, dst := netip.MustParseAddr("2001:21::1"), netip.MustParseAddr("2001:21::2")
	base := udp6(src, dst, 1234, 5678, 4)
	// Insert a hop-by-hop header (8 bytes) and a first fragment header.
	withExt := func(first bool) []byte {
		p := make([]byte, 0, len(base)+16)
		p = append(p, base[:40]...)
		p[6] = protoHopByHop
		p = append(p, protoFragment, 0, 1, 4, 0, 0, 0, 0) // HBH: next=frag, len 0, PadN
		fo := uint16(0)
		if !first {
			fo = 185 << 3
		}
		p = append(p, protoUDP, 0, byte(fo>>8), byte(fo), 0, 0, 0, 1)
		p = append(p, base[40:]...)
		binary.BigEndian.PutUint16(p[4:], uint16(len(p)-40))
		return p
	}
	var info packetInfo
	if !parseIPv6(withExt(true), &info) || info.proto != protoUDP || info.sport != 1234 || info.dport != 5678 {
		t.Fatalf("first fragment: %+v", info)
	}
	if !parseIPv6(withExt(false), &info) || info.proto != protoUDP || info.sport != 0 {
		t.Fatalf("later fragment: %+v", info)
	}
	// Payload length beyond the buffer is malformed.
	short := append([]byte(nil), base...)
	binary.BigEndian.PutUint16(short[4:], 2000)
	if parseIPv6(short, &info) {
		t.Fatal("accepted a packet shorter than its payload length")
	}
}

// FuzzParseIPv6 checks the fast parser against gVisor's IPv6 and transport
// header code (an independent implementation) on any input.
func FuzzParseIPv6(f *testing.F) {
	src, dst := netip.MustParseAddr("2001:21::1"), netip.MustParseAddr("2001:21::2")
	f.Add(udp6(src, dst, 1, 2, 3))
	f.Add([]byte{0x60})
	tcp := udp6(src, dst, 80, 443, 20)
	tcp[6] = protoTCP
	f.Add(tcp)
	f.Fuzz(func(t *testing.T, pkt []byte) {
		var info packetInfo
		ok := parseIPv6(pkt, &info)
		h := header.IPv6(pkt)
		refOK := len(pkt) >= header.IPv6MinimumSize && h.IsValid(len(pkt))
		if ok != refOK {
			t.Fatalf("parseIPv6 ok=%v, gVisor IsValid=%v", ok, refOK)
		}
		if !ok {
			return
		}
		if info.src != h.SourceAddress().As16() || info.dst != h.DestinationAddress().As16() {
			t.Fatal("addresses differ from gVisor's")
		}
		// Without extension headers the transport header follows directly.
		payload := pkt[40 : 40+int(h.PayloadLength())]
		switch h.TransportProtocol() {
		case header.TCPProtocolNumber, header.UDPProtocolNumber:
			if info.proto != pkt[6] {
				t.Fatalf("proto %d, header says %d", info.proto, pkt[6])
			}
			if len(payload) >= 4 {
				u := header.UDP(payload) // ports sit at the same offsets in TCP
				if info.sport != u.SourcePort() || info.dport != u.DestinationPort() {
					t.Fatalf("ports %d,%d, gVisor %d,%d", info.sport, info.dport, u.SourcePort(), u.DestinationPort())
				}
			}
		}
	})
}
