package overlay

import (
	"net/netip"
	"testing"

	"github.com/agent6/agent6/identity"
)

// SetPeer changes AllowedIPs prefix by prefix and keeps what it did not
// change; RemovePeer forgets them.
func TestSetPeerAllowedIPs(t *testing.T) {
	k, _ := identity.GeneratePrivateKey()
	backend, _, err := NewNetstack(k.WireGuard().Public().Addr(), 1420)
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewDevice(backend, Config{PrivateKey: k.WireGuard()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pk, _ := identity.GeneratePrivateKey()
	pub := pk.WireGuard().Public()
	own := netip.PrefixFrom(pub.Addr(), 128)
	task1, task2 := netip.MustParsePrefix("2001:21::1/128"), netip.MustParsePrefix("2001:21::2/128")
	check := func(want ...netip.Prefix) {
		t.Helper()
		peers, err := d.Peers()
		if err != nil || len(peers) != 1 {
			t.Fatalf("peers = %v, %v", peers, err)
		}
		got := map[netip.Prefix]bool{}
		for _, a := range peers[0].AllowedIPs {
			got[a] = true
		}
		if len(got) != len(want) {
			t.Fatalf("allowed = %v, want %v", peers[0].AllowedIPs, want)
		}
		for _, w := range want {
			if !got[w] {
				t.Fatalf("allowed = %v, want %v", peers[0].AllowedIPs, want)
			}
		}
	}
	for _, step := range [][]netip.Prefix{{own}, {own, task1}, {own, task1, task2}, {own, task2}, {own}} {
		if err := d.SetPeer(PeerConfig{PublicKey: pub, AllowedIPs: step}); err != nil {
			t.Fatal(err)
		}
		check(step...)
	}
	if err := d.RemovePeer(pub); err != nil {
		t.Fatal(err)
	}
	if err := d.SetPeer(PeerConfig{PublicKey: pub, AllowedIPs: []netip.Prefix{own, task1}}); err != nil {
		t.Fatal(err)
	}
	check(own, task1)
}
