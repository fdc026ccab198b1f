package identity

import (
	"crypto/sha3"
	"net/netip"
)

// Prefix is the ORCHIDv2 prefix that holds every Agent6 address.
var Prefix = netip.MustParsePrefix("2001:20::/28")

// Suite is the ORCHIDv2 OGA suite Agent6 uses (cSHAKE128 over the WireGuard
// public key). It is the low nibble of the fourth address byte.
const Suite = 1

// ContextID is Agent6's ORCHIDv2 context identifier (RFC 7343 §2), fixed
// forever. It is the customisation string of the cSHAKE128 hash.
var ContextID = [16]byte{
	0x30, 0x85, 0xde, 0x23, 0xfa, 0x94, 0xef, 0x1c,
	0x4d, 0xe0, 0xe5, 0x63, 0x46, 0x03, 0xd1, 0x59,
}

// first4 is the 2001:20::/28 prefix followed by the suite nibble.
var first4 = [4]byte{0x20, 0x01, 0x00, 0x20 | Suite}

// Addr returns the Agent6 address of the WireGuard public key p:
// first4 || cSHAKE128(N="", S=ContextID, X=first4 || p)[:12].
func (p WGPublicKey) Addr() netip.Addr {
	h := sha3.NewCSHAKE128(nil, ContextID[:])
	h.Write(first4[:])
	h.Write(p.k[:])
	var a [16]byte
	copy(a[:4], first4[:])
	h.Read(a[4:])
	return netip.AddrFrom16(a)
}

// IsOverlay reports whether a is in the Agent6 prefix with Agent6's suite,
// that is, whether it could be the address of some key.
func IsOverlay(a netip.Addr) bool {
	if !a.Is6() || a.Is4In6() {
		return false
	}
	b := a.As16()
	return [4]byte(b[:4]) == first4
}

// Owns reports whether a is the address derived from p.
func (p WGPublicKey) Owns(a netip.Addr) bool { return p.Addr() == a.Unmap() }
