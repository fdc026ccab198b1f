package overlay

import (
	"fmt"
	"net/netip"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// NewNetstack creates a userspace TCP/IP stack (gVisor) holding addr, and
// the tun.Device through which its packets reach WireGuard. It needs no
// privileges, and many can live in one process.
func NewNetstack(addr netip.Addr, mtu int) (tun.Device, *netstack.Net, error) {
	dev, tnet, err := netstack.CreateNetTUN([]netip.Addr{addr}, nil, mtu)
	if err != nil {
		return nil, nil, fmt.Errorf("overlay: create netstack: %w", err)
	}
	return dev, tnet, nil
}
