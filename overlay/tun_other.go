//go:build !linux

package overlay

import (
	"errors"
	"net/netip"

	"golang.zx2c4.com/wireguard/tun"
)

// CreateKernelTUN is only implemented on Linux; elsewhere use the netstack
// backend (NewNetstack).
func CreateKernelTUN(name string, mtu int, addr netip.Addr) (tun.Device, error) {
	return nil, errors.New("overlay: kernel TUN mode is only supported on Linux")
}

// CheckKernelTUN is only implemented on Linux.
func CheckKernelTUN(name string) error {
	return errors.New("overlay: kernel TUN mode is only supported on Linux")
}

// AddTUNAddress is only implemented on Linux.
func AddTUNAddress(name string, addr netip.Addr) error {
	return errors.New("overlay: kernel TUN mode is only supported on Linux")
}

// RemoveTUNAddress is only implemented on Linux.
func RemoveTUNAddress(name string, addr netip.Addr) error {
	return errors.New("overlay: kernel TUN mode is only supported on Linux")
}
