package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/agent6/agent6/identity"
)

// CreateKernelTUN creates the kernel TUN interface name with the given MTU,
// gives it addr as a /128, brings it up and routes the Agent6 prefix
// (2001:20::/28) into it. It needs CAP_NET_ADMIN. Before touching anything
// it checks that no interface is called name and that no route for the
// prefix exists (another agent6 in this network namespace, or a stale
// configuration): it never takes over what it did not create. Closing the
// returned device removes the interface, and with it its address and route.
func CreateKernelTUN(name string, mtu int, addr netip.Addr) (tun.Device, error) {
	if err := CheckKernelTUN(name); err != nil {
		return nil, err
	}
	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		if errors.Is(err, os.ErrPermission) || errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("overlay: create TUN %q: %w (needs root or CAP_NET_ADMIN)", name, err)
		}
		return nil, fmt.Errorf("overlay: create TUN %q: %w", name, err)
	}
	real, err := dev.Name()
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("overlay: TUN name: %w", err)
	}
	if err := configureLink(real, mtu, addr); err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
}

// CheckKernelTUN reports, without changing anything, why CreateKernelTUN
// would fail here: an interface called name exists, or a route for the
// Agent6 prefix exists.
func CheckKernelTUN(name string) error {
	if _, err := netlink.LinkByName(name); err == nil {
		return fmt.Errorf("overlay: interface %q exists (another agent6, or a stale device; `ip link del %s` if nothing uses it)", name, name)
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		return fmt.Errorf("overlay: look for interface %q: %w", name, err)
	}
	pfx := identity.Prefix
	dst := &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), 128)}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Dst: dst, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("overlay: list routes for %s: %w", pfx, err)
	}
	if len(routes) == 0 {
		return nil
	}
	dev := fmt.Sprintf("interface index %d", routes[0].LinkIndex)
	if l, err := netlink.LinkByIndex(routes[0].LinkIndex); err == nil {
		dev = l.Attrs().Name
	}
	return fmt.Errorf("overlay: %s is already routed to %s (another agent6 in this network namespace?)", pfx, dev)
}

func configureLink(name string, mtu int, addr netip.Addr) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("overlay: find link %q: %w", name, err)
	}
	// No link-local address, router solicitations or RAs: the overlay
	// carries only Agent6 addresses.
	for file, val := range map[string]string{"addr_gen_mode": "1", "accept_ra": "0", "router_solicitations": "0"} {
		p := filepath.Join("/proc/sys/net/ipv6/conf", name, file)
		_ = os.WriteFile(p, []byte(val), 0o644) // best effort; absent on kernels without IPv6 sysctls
	}
	if err := netlink.LinkSetMTU(link, mtu); err != nil {
		return fmt.Errorf("overlay: set MTU %d on %q: %w", mtu, name, err)
	}
	a := &netlink.Addr{
		IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(128, 128)},
		Flags: unix.IFA_F_NODAD,
	}
	if err := netlink.AddrAdd(link, a); err != nil {
		return fmt.Errorf("overlay: add address %s to %q: %w", addr, name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("overlay: bring %q up: %w", name, err)
	}
	pfx := identity.Prefix
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), 128)},
		Src:       addr.AsSlice(),
	}
	// Add, never replace: a route that appeared since CheckKernelTUN is
	// someone else's.
	if err := netlink.RouteAdd(route); err != nil {
		return fmt.Errorf("overlay: route %s into %q: %w", pfx, name, err)
	}
	return nil
}

// AddTUNAddress adds a (task) address to the TUN interface name, so that
// local processes can bind it.
func AddTUNAddress(name string, addr netip.Addr) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("overlay: find link %q: %w", name, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}
	if err := netlink.AddrAdd(link, a); err != nil {
		return fmt.Errorf("overlay: add address %s to %q: %w", addr, name, err)
	}
	return nil
}

// RemoveTUNAddress removes an address added with AddTUNAddress.
func RemoveTUNAddress(name string, addr netip.Addr) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("overlay: find link %q: %w", name, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(128, 128)}}
	if err := netlink.AddrDel(link, a); err != nil {
		return fmt.Errorf("overlay: remove address %s from %q: %w", addr, name, err)
	}
	return nil
}
