package node_test

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
)

// udpPacket builds an IPv6/UDP packet with a valid checksum.
func udpPacket(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	p := make([]byte, 48+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(8+len(payload)))
	p[6], p[7] = 17, 64
	s, d := src.As16(), dst.As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	binary.BigEndian.PutUint16(p[40:], sport)
	binary.BigEndian.PutUint16(p[42:], dport)
	binary.BigEndian.PutUint16(p[44:], uint16(8+len(payload)))
	copy(p[48:], payload)
	// Checksum over the pseudo-header and the UDP segment.
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(p[8:40])
	sum += uint32(8+len(payload)) + 17
	add(p[40:])
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	cs := ^uint16(sum)
	if cs == 0 {
		cs = 0xffff
	}
	binary.BigEndian.PutUint16(p[46:], cs)
	return p
}

// TestSpoofedSourceRefused runs a hostile peer: a raw WireGuard device that
// holds a key the victim accepts but writes packets with other sources.
// Only the packet whose source is the attacker's own derived address may
// reach the victim's socket; the others are refused and counted.
func TestSpoofedSourceRefused(t *testing.T) {
	victim := &node.Node{}
	if err := victim.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer victim.Close()
	pc, err := victim.ListenPacket("udp", ":7000")
	if err != nil {
		t.Fatal(err)
	}

	attackerKey, _ := identity.GeneratePrivateKey()
	attackerPub := attackerKey.WireGuard().Public()
	ch := tuntest.NewChannelTUN()
	dev := device.NewDevice(ch.TUN(), conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	defer dev.Close()
	go func() { // drain whatever the victim sends back
		for range ch.Inbound {
		}
	}()
	vport, _ := victim.UDPPort()
	raw := attackerKey.WireGuard().Raw()
	vraw := victim.PublicKey().Raw()
	if err := dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=0\npublic_key=%s\nendpoint=127.0.0.1:%d\nallowed_ip=::/0\n",
		hex.EncodeToString(raw[:]), hex.EncodeToString(vraw[:]), vport)); err != nil {
		t.Fatal(err)
	}
	if err := dev.Up(); err != nil {
		t.Fatal(err)
	}
	if err := victim.AddPeer(node.Peer{PublicKey: attackerPub}); err != nil {
		t.Fatal(err)
	}

	other, _ := identity.GeneratePrivateKey()
	spoofed := other.WireGuard().Public().Addr()
	stranger := netip.MustParseAddr("2001:21::dead") // overlay, but not the victim
	send := func(src, dst netip.Addr, msg string) {
		ch.Outbound <- udpPacket(src, dst, 9000, 7000, []byte(msg))
	}
	// Spoofed sources and a foreign destination first, then the honest
	// packet: when it arrives, the others had their chance.
	send(spoofed, victim.Addr(), "spoofed-overlay")
	send(netip.MustParseAddr("2001:db8::1"), victim.Addr(), "spoofed-outside")
	send(attackerPub.Addr(), stranger, "foreign-destination")
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 100)
	for {
		send(attackerPub.Addr(), victim.Addr(), "honest")
		pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, from, err := pc.ReadFrom(buf)
		if err == nil {
			if string(buf[:n]) != "honest" {
				t.Fatalf("victim received %q from %v: a spoofed packet was delivered", buf[:n], from)
			}
			if got := from.String(); got != netip.AddrPortFrom(attackerPub.Addr(), 9000).String() {
				t.Fatalf("honest packet from %s", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("honest packet never arrived")
		}
	}
	// Nothing else is queued.
	pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			break
		}
		if string(buf[:n]) != "honest" {
			t.Fatalf("victim received %q: a spoofed packet was delivered", buf[:n])
		}
	}
	st, _ := victim.Status()
	// Both spoofed sources were refused by cryptokey routing and counted.
	if got := st.Filter.Drops["peer_spoofed_source"]; got != 2 {
		t.Errorf("peer-spoofed-source drops = %d, want 2 (%v)", got, st.Filter.Drops)
	}
	if st.Filter.Drops["foreign_destination"] != 1 {
		t.Errorf("foreign-destination drops = %d, want 1 (%v)", st.Filter.Drops["foreign_destination"], st.Filter.Drops)
	}
}
