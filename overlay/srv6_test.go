package overlay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// srv6Addrs are the agents of the SRv6 tests: a source, two waypoints and
// a destination (overlay addresses; no keys needed to encode).
var (
	addrA  = netip.MustParseAddr("2001:21::a")
	addrW1 = netip.MustParseAddr("2001:21::1")
	addrW2 = netip.MustParseAddr("2001:21::2")
	addrD  = netip.MustParseAddr("2001:21::d")
)

// buildSRv6 encapsulates inner (src → dst) through wps as the source
// does.
func buildSRv6(inner []byte, wps []netip.Addr, seq uint64) []byte {
	var info packetInfo
	if !parseIPv6(inner, &info) {
		panic("buildSRv6: bad inner packet")
	}
	addrs := make([][16]byte, len(wps))
	for i, w := range wps {
		addrs[i] = w.As16()
	}
	hdr := make([]byte, srv6Overhead(len(wps)))
	writeSRv6Header(hdr, info.src, info.dst, addrs)
	buf := make([]byte, len(hdr)+len(inner))
	copy(buf, inner)
	return buf[:encapsulate(buf, 0, len(inner), hdr, seq)]
}

func TestSRv6RoundTrip(t *testing.T) {
	inner := udp6(addrA, addrD, 1234, 8080, 100)
	inner[1], inner[2], inner[3] = 0xab, 0xcd, 0xef // traffic class and flow label
	for k := 1; k <= MaxWaypoints; k++ {
		var wps []netip.Addr
		for i := range k {
			wps = append(wps, netip.AddrFrom16([16]byte{0x20, 0x01, 0x00, 0x21, 15: byte(0x10 + i)}))
		}
		pkt := buildSRv6(inner, wps, 0x0102030405060708)
		if len(pkt) != len(inner)+srv6Overhead(k) || srv6Overhead(k)%8 != 0 {
			t.Fatalf("k=%d: %d bytes, overhead %d", k, len(pkt), srv6Overhead(k))
		}
		var v srv6View
		if err := parseSRv6(pkt, &v); err != nil {
			t.Fatalf("k=%d: %v", k, err)
		}
		if v.n != k+1 || v.sl != k || v.waypoints() != k || v.hop() != 0 || v.seq() != 0x0102030405060708 {
			t.Fatalf("k=%d: n=%d sl=%d hop=%d seq=%x", k, v.n, v.sl, v.hop(), v.seq())
		}
		// Segment List[0] is the destination, the waypoints follow in
		// reverse; the outer header goes from the source to the first
		// waypoint and keeps the inner class and flow label.
		if netip.AddrFrom16([16]byte(v.segment(0))) != addrD {
			t.Fatalf("k=%d: Segment List[0] = %x", k, v.segment(0))
		}
		for j, w := range wps {
			if netip.AddrFrom16([16]byte(v.waypoint(j))) != w || !bytes.Equal(v.segment(k-j), v.waypoint(j)) {
				t.Fatalf("k=%d: waypoint %d", k, j)
			}
			if !isZero(v.stamp(j)) {
				t.Fatalf("k=%d: stamp %d not zero at the source", k, j)
			}
		}
		if netip.AddrFrom16([16]byte(pkt[8:24])) != addrA || netip.AddrFrom16([16]byte(pkt[24:40])) != wps[0] ||
			!bytes.Equal(pkt[0:4], inner[0:4]) || pkt[7] != outerHopLimit {
			t.Fatalf("k=%d: outer header % x", k, pkt[:40])
		}
		if !bytes.Equal(pkt[v.inner:], inner) || v.info.sport != 1234 || v.info.dport != 8080 || v.info.proto != protoUDP {
			t.Fatalf("k=%d: inner packet changed or misread: %+v", k, v.info)
		}
	}
	// Unknown TLVs are skipped (RFC 8754) and padding aligns the header.
	pkt := buildSRv6(inner, []netip.Addr{addrW1}, 1)
	withTLV := insertTLVs(pkt, []byte{124, 4, 1, 2, 3, 4, tlvPadN, 0})
	var v srv6View
	if err := parseSRv6(withTLV, &v); err != nil {
		t.Fatalf("unknown TLV and PadN: %v", err)
	}
	if err := parseSRv6(insertTLVs(pkt, []byte{124, 5, 1, 2, 3, 4, 5, tlvPad1}), &v); err != nil {
		t.Fatalf("unknown TLV and Pad1: %v", err)
	}
}

// insertTLVs adds tlvs (a multiple of 8 bytes) at the end of pkt's SRH.
func insertTLVs(pkt, tlvs []byte) []byte {
	srhEnd := ipv6HeaderLen + 8*(int(pkt[ipv6HeaderLen+1])+1)
	out := append(append(append([]byte(nil), pkt[:srhEnd]...), tlvs...), pkt[srhEnd:]...)
	out[ipv6HeaderLen+1] += byte(len(tlvs) / 8)
	binary.BigEndian.PutUint16(out[4:], uint16(len(out)-ipv6HeaderLen))
	return out
}

func TestSRv6Refuses(t *testing.T) {
	inner := udp6(addrA, addrD, 1234, 8080, 20)
	good := buildSRv6(inner, []netip.Addr{addrW1, addrW2}, 7)
	const srh = ipv6HeaderLen
	tlv := srh + srhFixedLen + 16*3 // the proof-of-transit TLV
	for _, tc := range []struct {
		name string
		mut  func(p []byte) []byte
		want error
	}{
		{"short", func(p []byte) []byte { return p[:44] }, errSRHShort},
		{"payload length beyond the packet", func(p []byte) []byte { return p[:len(p)-1] }, errSRHShort},
		{"not a routing header", func(p []byte) []byte { p[6] = protoUDP; return p }, errSRHNotSRH},
		{"routing type 0", func(p []byte) []byte { p[srh+2] = 0; return p }, errSRHNotSRH},
		{"header length beyond the packet", func(p []byte) []byte { p[srh+1] = 200; return p }, errSRHLength},
		{"next header not IPv6", func(p []byte) []byte { p[srh] = protoUDP; return p }, errSRHNextHeader},
		{"last entry beyond the header", func(p []byte) []byte { p[srh+4] = 6; return p }, errSRHLastEntry},
		{"last entry beyond the limit", func(p []byte) []byte { p[srh+4] = MaxWaypoints + 1; return p }, errSRHLastEntry},
		{"segments left beyond the list", func(p []byte) []byte { p[srh+3] = 3; return p }, errSRHSegmentsLeft},
		{"destination not the active segment", func(p []byte) []byte { p[39] ^= 1; return p }, errSRHActiveSegment},
		{"proof TLV: wrong length", func(p []byte) []byte { p[tlv+1] -= 16; return p }, errSRHProof},
		{"proof TLV: wrong version", func(p []byte) []byte { p[tlv+2] = 2; return p }, errSRHProof},
		{"proof TLV: wrong hop count", func(p []byte) []byte { p[tlv+3] = 1; return p }, errSRHProof},
		{"proof TLV: reserved set", func(p []byte) []byte { p[tlv+5] = 1; return p }, errSRHProof},
		{"proof TLV missing", func(p []byte) []byte { p[tlv] = 124; return p }, errSRHProof},
		{"TLV beyond the header", func(p []byte) []byte { p[tlv+1] = 250; return p }, errSRHTLV},
		{"two proof TLVs", func(p []byte) []byte {
			return insertTLVs(p, append([]byte{TLVTypeTransitProof, potFixedLen + 32, potVersion, 2}, make([]byte, potFixedLen-2+32+2)...))
		}, errSRHProof},
		{"padding not zero", func(p []byte) []byte { return insertTLVs(p, []byte{124, 0, tlvPadN, 2, 0, 1, 0, 0}) }, errSRHPadding},
		{"padding beyond 7 bytes", func(p []byte) []byte { return insertTLVs(p, []byte{tlvPadN, 6, 0, 0, 0, 0, 0, 0}) }, errSRHPadding},
		{"eight Pad1", func(p []byte) []byte { return insertTLVs(p, make([]byte, 8)) }, errSRHPadding},
		{"TLV header cut", func(p []byte) []byte { return insertTLVs(p, []byte{124, 4, 0, 0, 0, 0, tlvPad1, 124}) }, errSRHTLV},
		{"inner not IPv6", func(p []byte) []byte { p[len(p)-len(inner)] = 0x45; return p }, errSRHInner},
		{"final segment not the inner destination", func(p []byte) []byte { p[ipv6HeaderLen+srhFixedLen+15] ^= 1; return p }, errSRHFinalSegment},
		{"inner shorter than the payload", func(p []byte) []byte {
			binary.BigEndian.PutUint16(p[len(p)-len(inner)+4:], uint16(len(inner)-ipv6HeaderLen-1))
			return p
		}, errSRHInner},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.mut(append([]byte(nil), good...))
			var v srv6View
			if err := parseSRv6(p, &v); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// FuzzParseSRv6 feeds the SRH decoder anything: it must never panic, and
// what it accepts must be a packet whose every part it names lies inside
// it, whose inner packet parses, and which the encoder rebuilds byte for
// byte from what the decoder read (when it carries no other TLVs).
func FuzzParseSRv6(f *testing.F) {
	inner := udp6(addrA, addrD, 1, 2, 10)
	f.Add(buildSRv6(inner, []netip.Addr{addrW1}, 1))
	f.Add(buildSRv6(inner, []netip.Addr{addrW1, addrW2}, 2))
	f.Add(insertTLVs(buildSRv6(inner, []netip.Addr{addrW1}, 1), []byte{124, 4, 1, 2, 3, 4, tlvPadN, 0}))
	f.Add([]byte{0x60})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		var v srv6View
		if parseSRv6(pkt, &v) != nil {
			return
		}
		if v.sl >= v.n || v.n > MaxWaypoints+1 || v.inner > len(v.pkt) || v.stamps+stampLen*v.waypoints() > v.inner {
			t.Fatalf("accepted with n=%d sl=%d stamps@%d inner@%d len %d", v.n, v.sl, v.stamps, v.inner, len(v.pkt))
		}
		for j := range v.waypoints() {
			_ = v.waypoint(j)
			_ = v.stamp(j)
		}
		var info packetInfo
		if !parseIPv6(v.pkt[v.inner:], &info) || info != v.info {
			t.Fatal("inner packet does not re-parse alike")
		}
		if v.inner != srv6Overhead(v.waypoints()) || v.pkt[ipv6HeaderLen+5] != 0 || v.pkt[ipv6HeaderLen+6] != 0 || v.pkt[ipv6HeaderLen+7] != 0 {
			return // other TLVs or flags: not the encoder's output
		}
		var wps []netip.Addr
		for j := range v.waypoints() {
			wps = append(wps, netip.AddrFrom16([16]byte(v.waypoint(j))))
		}
		if !bytes.Equal(v.segment(0), v.info.dst[:]) || v.waypoints() == 0 || v.sl != v.n-1 || !bytes.Equal(v.pkt[8:24], v.info.src[:]) ||
			v.pkt[7] != outerHopLimit || !isZero(v.pkt[v.stamps:v.inner]) || !bytes.Equal(v.pkt[0:4], v.pkt[v.inner:v.inner+4]) {
			return // not as a source sends it
		}
		again := buildSRv6(v.pkt[v.inner:], wps, v.seq())
		if !bytes.Equal(again, v.pkt) {
			t.Fatalf("re-encoding differs:\n% x\n% x", again, v.pkt)
		}
	})
}

// requireTshark skips when tshark is absent, except in CI, which installs
// it.
func requireTshark(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("tshark")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("tshark not installed (CI installs it)")
		}
		t.Skip("tshark not installed: cannot check that Wireshark decodes the SRH")
	}
	return path
}

// tsharkFields reads a pcap file with tshark and returns, per packet, the
// fields asked for.
func tsharkFields(t *testing.T, file string, fields ...string) [][]string {
	t.Helper()
	args := []string{"-r", file, "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"}
	for _, f := range fields {
		args = append(args, "-e", f)
	}
	cmd := exec.Command(requireTshark(t), args...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir()) // no user profile
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, stderr.String())
	}
	var rows [][]string
	for line := range strings.SplitSeq(strings.TrimRight(string(out), "\n"), "\n") {
		rows = append(rows, strings.Split(line, "\t"))
	}
	return rows
}

// What the encoder emits decodes in tshark as an SRH with the right
// segments and segments left, and the inner packet after it: as the
// source sends it, and as the first waypoint forwards it.
func TestSRv6Tshark(t *testing.T) {
	requireTshark(t)
	inner := udp6(addrA, addrD, 40000, 8080, 64)
	pkt := buildSRv6(inner, []netip.Addr{addrW1, addrW2}, 1)
	fwd := append([]byte(nil), pkt...) // W1's forward: segments left 1, W1 → W2
	fwd[ipv6HeaderLen+3] = 1
	w1, w2 := addrW1.As16(), addrW2.As16()
	copy(fwd[8:24], w1[:])
	copy(fwd[24:40], w2[:])
	file := filepath.Join(t.TempDir(), "srv6.pcap")
	var buf bytes.Buffer
	writePcapHeader(&buf)
	writePcapRecord(&buf, time.Now(), pkt)
	writePcapRecord(&buf, time.Now(), fwd)
	if err := os.WriteFile(file, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	rows := tsharkFields(t, file, "ipv6.routing.type", "ipv6.routing.segleft", "ipv6.routing.srh.last_entry",
		"ipv6.routing.srh.addr", "ipv6.src", "ipv6.dst", "udp.dstport")
	segs := strings.Join([]string{addrD.String(), addrW2.String(), addrW1.String()}, ",")
	want := [][]string{
		{"4", "2", "2", segs, addrA.String() + "," + addrA.String(), addrW1.String() + "," + addrD.String(), "8080"},
		{"4", "1", "2", segs, addrW1.String() + "," + addrA.String(), addrW2.String() + "," + addrD.String(), "8080"},
	}
	if len(rows) != len(want) {
		t.Fatalf("tshark read %d packets, want %d: %q", len(rows), len(want), rows)
	}
	for i := range want {
		if strings.Join(rows[i], " | ") != strings.Join(want[i], " | ") {
			t.Errorf("packet %d:\n got  %s\n want %s", i, strings.Join(rows[i], " | "), strings.Join(want[i], " | "))
		}
	}
}
