package identity

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net/netip"

	"filippo.io/edwards25519"
)

// PrivateKey is an agent's one secret: an Ed25519 private key, its 32-byte
// seed. It also holds the public key, derived once when the key is made,
// so that signing and Public cost no scalar multiplication for it. The
// zero value is not a valid key; see IsZero.
type PrivateKey struct {
	seed [ed25519.SeedSize]byte
	pub  [ed25519.PublicKeySize]byte
}

// GeneratePrivateKey returns a new random agent key.
func GeneratePrivateKey() (PrivateKey, error) {
	var seed [ed25519.SeedSize]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return PrivateKey{}, fmt.Errorf("identity: generate key: %w", err)
	}
	return PrivateKeyFromSeed(seed[:])
}

// PrivateKeyFromSeed returns the agent key with the given 32-byte Ed25519 seed.
func PrivateKeyFromSeed(seed []byte) (PrivateKey, error) {
	var k PrivateKey
	if len(seed) != len(k.seed) {
		return PrivateKey{}, fmt.Errorf("%w: seed is %d bytes, want %d", ErrInvalidKey, len(seed), len(k.seed))
	}
	copy(k.seed[:], seed)
	copy(k.pub[:], ed25519.NewKeyFromSeed(seed)[ed25519.SeedSize:])
	return k, nil
}

// IsZero reports whether k is the zero value (no key).
func (k PrivateKey) IsZero() bool { return k.Equal(PrivateKey{}) }

// Equal reports whether k and o are the same key, in constant time.
func (k PrivateKey) Equal(o PrivateKey) bool {
	return subtle.ConstantTimeCompare(k.seed[:], o.seed[:]) == 1
}

// ed25519 returns k in crypto/ed25519's form: seed, then public key.
func (k PrivateKey) ed25519() ed25519.PrivateKey {
	b := make(ed25519.PrivateKey, 0, ed25519.PrivateKeySize)
	return append(append(b, k.seed[:]...), k.pub[:]...)
}

// Public returns the Ed25519 public key of k.
func (k PrivateKey) Public() PublicKey { return PublicKey{k: k.pub} }

// Sign signs msg with k (pure Ed25519).
func (k PrivateKey) Sign(msg []byte) []byte { return ed25519.Sign(k.ed25519(), msg) }

// WireGuard returns the X25519 key WireGuard uses for this agent:
// clamp(SHA-512(seed)[:32]), as libsodium's crypto_sign_ed25519_sk_to_curve25519.
func (k PrivateKey) WireGuard() WGPrivateKey {
	h := sha512.Sum512(k.seed[:])
	var w WGPrivateKey
	copy(w.k[:], h[:32])
	w.k[0] &= 248
	w.k[31] &= 127
	w.k[31] |= 64
	return w
}

// String does not reveal the key.
func (k PrivateKey) String() string { return "identity.PrivateKey(redacted)" }

// PublicKey is an agent's Ed25519 public key.
type PublicKey struct {
	k [ed25519.PublicKeySize]byte
}

// PublicKeyFromBytes returns the Ed25519 public key encoded in b (32 bytes).
// It checks that b is a valid curve point.
func PublicKeyFromBytes(b []byte) (PublicKey, error) {
	var p PublicKey
	if len(b) != len(p.k) {
		return PublicKey{}, fmt.Errorf("%w: Ed25519 public key is %d bytes, want %d", ErrInvalidKey, len(b), len(p.k))
	}
	if _, err := new(edwards25519.Point).SetBytes(b); err != nil {
		return PublicKey{}, fmt.Errorf("%w: Ed25519 public key is not a curve point", ErrInvalidKey)
	}
	copy(p.k[:], b)
	return p, nil
}

// Bytes returns the 32-byte encoding of p.
func (p PublicKey) Bytes() []byte { return append([]byte(nil), p.k[:]...) }

// IsZero reports whether p is the zero value.
func (p PublicKey) IsZero() bool { return p == PublicKey{} }

// Equal reports whether p and o are the same key.
func (p PublicKey) Equal(o PublicKey) bool { return subtle.ConstantTimeCompare(p.k[:], o.k[:]) == 1 }

// Verify reports whether sig is p's valid Ed25519 signature of msg.
func (p PublicKey) Verify(msg, sig []byte) bool { return ed25519.Verify(p.k[:], msg, sig) }

// WireGuard returns the Montgomery (X25519) form of p: the WireGuard public
// key of the agent that holds p.
func (p PublicKey) WireGuard() (WGPublicKey, error) {
	pt, err := new(edwards25519.Point).SetBytes(p.k[:])
	if err != nil {
		return WGPublicKey{}, fmt.Errorf("%w: Ed25519 public key is not a curve point", ErrInvalidKey)
	}
	var w WGPublicKey
	copy(w.k[:], pt.BytesMontgomery())
	return w, nil
}

// Addr returns the Agent6 address of the agent holding p.
func (p PublicKey) Addr() (netip.Addr, error) {
	w, err := p.WireGuard()
	if err != nil {
		return netip.Addr{}, err
	}
	return w.Addr(), nil
}

// String returns p in standard base64.
func (p PublicKey) String() string { return base64.StdEncoding.EncodeToString(p.k[:]) }

// MarshalText implements encoding.TextMarshaler (standard base64).
func (p PublicKey) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *PublicKey) UnmarshalText(b []byte) error {
	raw, err := decode32(b)
	if err != nil {
		return fmt.Errorf("%w: Ed25519 public key: %v", ErrInvalidKey, err)
	}
	k, err := PublicKeyFromBytes(raw[:])
	if err != nil {
		return err
	}
	*p = k
	return nil
}

func decode32(b []byte) ([32]byte, error) {
	var out [32]byte
	if len(b) != base64.StdEncoding.EncodedLen(len(out)) {
		return out, fmt.Errorf("want %d base64 characters, got %d", base64.StdEncoding.EncodedLen(len(out)), len(b))
	}
	var buf [33]byte // DecodedLen(44)
	n, err := base64.StdEncoding.Strict().Decode(buf[:], b)
	if err != nil {
		return out, fmt.Errorf("bad base64: %v", err)
	}
	if n != len(out) {
		return out, fmt.Errorf("decodes to %d bytes, want %d", n, len(out))
	}
	copy(out[:], buf[:n])
	return out, nil
}
