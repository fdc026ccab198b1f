package identity

import (
	"crypto/subtle"
	"encoding/base64"
	"fmt"

	"golang.org/x/crypto/curve25519"
)

// WGPrivateKey is an X25519 private key as WireGuard uses it.
type WGPrivateKey struct {
	k [32]byte
}

// Raw returns the 32 key bytes, for handing to the WireGuard device.
func (w WGPrivateKey) Raw() [32]byte { return w.k }

// Public returns the X25519 public key of w.
func (w WGPrivateKey) Public() WGPublicKey {
	var p WGPublicKey
	pub, err := curve25519.X25519(w.k[:], curve25519.Basepoint)
	if err != nil {
		// Only a low-order result errors, and a clamped scalar times the
		// base point is never low order.
		panic("identity: X25519 of base point failed: " + err.Error())
	}
	copy(p.k[:], pub)
	return p
}

// Equal reports whether w and o are the same key, in constant time.
func (w WGPrivateKey) Equal(o WGPrivateKey) bool {
	return subtle.ConstantTimeCompare(w.k[:], o.k[:]) == 1
}

// Base64 returns the key in the form `wg genkey` prints. It reveals the
// secret; String does not.
func (w WGPrivateKey) Base64() string { return base64.StdEncoding.EncodeToString(w.k[:]) }

// String does not reveal the key.
func (w WGPrivateKey) String() string { return "identity.WGPrivateKey(redacted)" }

// WGPublicKey is an X25519 public key: a WireGuard peer's identity. Every
// WireGuard public key has an Agent6 address (Addr).
type WGPublicKey struct {
	k [32]byte
}

// ParseWGPublicKey parses a WireGuard public key in the base64 form that
// `wg pubkey` prints.
func ParseWGPublicKey(s string) (WGPublicKey, error) {
	var p WGPublicKey
	if err := p.UnmarshalText([]byte(s)); err != nil {
		return WGPublicKey{}, err
	}
	return p, nil
}

// WGPublicKeyFromRaw returns the key with the given 32 bytes.
func WGPublicKeyFromRaw(raw [32]byte) WGPublicKey { return WGPublicKey{k: raw} }

// Raw returns the 32 key bytes.
func (p WGPublicKey) Raw() [32]byte { return p.k }

// IsZero reports whether p is the zero value.
func (p WGPublicKey) IsZero() bool { return p == WGPublicKey{} }

// Equal reports whether p and o are the same key.
func (p WGPublicKey) Equal(o WGPublicKey) bool {
	return subtle.ConstantTimeCompare(p.k[:], o.k[:]) == 1
}

// String returns p in standard base64, as `wg pubkey` prints it.
func (p WGPublicKey) String() string { return base64.StdEncoding.EncodeToString(p.k[:]) }

// ShortString returns an abbreviated form for logs, like "[kF2ab]".
func (p WGPublicKey) ShortString() string { return "[" + p.String()[:5] + "]" }

// MarshalText implements encoding.TextMarshaler.
func (p WGPublicKey) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler. It refuses the all-zero
// key, which WireGuard treats as "no key".
func (p *WGPublicKey) UnmarshalText(b []byte) error {
	raw, err := decode32(b)
	if err != nil {
		return fmt.Errorf("%w: WireGuard public key: %v", ErrInvalidKey, err)
	}
	if raw == [32]byte{} {
		return fmt.Errorf("%w: WireGuard public key is all zeros", ErrInvalidKey)
	}
	p.k = raw
	return nil
}
