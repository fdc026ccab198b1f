package audit

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"

	"github.com/agent6/agent6/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// NoTrustDomain stands for the trust domain in the names of a node that has
// none (static peers, no credential). The .invalid top-level domain (RFC
// 6761) never names a real organisation.
const NoTrustDomain = "no-trust-domain.invalid"

// Signature algorithm bytes of C2SP signed-note keys.
const (
	algEd25519       = 0x01 // C2SP signed-note Ed25519
	algCosignatureV1 = 0x04 // C2SP tlog-cosignature cosignature/v1
)

// Origin returns the checkpoint origin of the log kept by the node at addr
// in trustDomain: "<trust-domain>/agent6/audit/<address>", e.g.
// "example.org/agent6/audit/2001:21:4bc6:f39d:90d:70a2:9351:1c64". It is a
// schema-less URL-like name, as C2SP tlog-checkpoint recommends, unique per
// node (the address is derived from the node's key) and it names the
// organisation first, so a reader sees whose log it is. It is also the
// name of the log's signing key. An empty trustDomain is NoTrustDomain.
func Origin(trustDomain string, addr netip.Addr) (string, error) {
	return keyName(trustDomain, "audit", addr)
}

// WitnessName returns the name of the cosigning key of the node at addr as
// a witness: "<trust-domain>/agent6/witness/<address>".
func WitnessName(trustDomain string, addr netip.Addr) (string, error) {
	return keyName(trustDomain, "witness", addr)
}

func keyName(trustDomain, what string, addr netip.Addr) (string, error) {
	if trustDomain == "" {
		trustDomain = NoTrustDomain
	} else if _, err := spiffeid.TrustDomainFromString(trustDomain); err != nil {
		return "", fmt.Errorf("%w: trust domain %q: %v", ErrConfig, trustDomain, err)
	}
	if !addr.Is6() || addr.Zone() != "" || addr.Is4In6() {
		return "", fmt.Errorf("%w: %v is not an IPv6 address", ErrConfig, addr)
	}
	return trustDomain + "/agent6/" + what + "/" + addr.String(), nil
}

// Signer is a C2SP signed-note signer (Ed25519) over a node's own key, for
// the log's checkpoints. It never exposes the key.
type Signer struct {
	name string
	hash uint32
	key  identity.PrivateKey
}

var _ note.Signer = (*Signer)(nil)

// NewSigner returns the note signer named name over key.
func NewSigner(key identity.PrivateKey, name string) (*Signer, error) {
	if key.IsZero() {
		return nil, fmt.Errorf("%w: no key", ErrConfig)
	}
	if !validKeyName(name) {
		return nil, fmt.Errorf("%w: key name %q", ErrConfig, name)
	}
	pub := key.Public().Bytes()
	return &Signer{name: name, hash: keyHash(name, algEd25519, pub), key: key}, nil
}

// Name implements note.Signer.
func (s *Signer) Name() string { return s.name }

// KeyHash implements note.Signer.
func (s *Signer) KeyHash() uint32 { return s.hash }

// Sign implements note.Signer: a pure Ed25519 signature of msg.
func (s *Signer) Sign(msg []byte) ([]byte, error) { return s.key.Sign(msg), nil }

// VerifierKey returns the C2SP signed-note verifier key of the Ed25519 key
// pub named name, "<name>+<key hash>+<base64(0x01 || key)>", as
// note.NewVerifier reads it. `agent6 audit vkey` prints a node's.
func VerifierKey(name string, pub identity.PublicKey) (string, error) {
	k, err := note.NewEd25519VerifierKey(name, ed25519.PublicKey(pub.Bytes()))
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return k, nil
}

// NodeVerifierKey returns the verifier key of the log kept by the node
// whose key is pub, in trustDomain (empty: NoTrustDomain): what `agent6
// audit vkey` prints and a witness or auditor configures.
func NodeVerifierKey(pub identity.PublicKey, trustDomain string) (string, error) {
	addr, err := pub.Addr()
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrConfig, err)
	}
	origin, err := Origin(trustDomain, addr)
	if err != nil {
		return "", err
	}
	return VerifierKey(origin, pub)
}

// NewVerifier returns the note verifier of the log whose origin is name and
// whose node key is pub.
func NewVerifier(name string, pub identity.PublicKey) (note.Verifier, error) {
	k, err := VerifierKey(name, pub)
	if err != nil {
		return nil, err
	}
	return note.NewVerifier(k)
}

// Cosigner is a C2SP tlog-cosignature signer (cosignature/v1) over a
// node's own key: what a witness signs a checkpoint with. Its signature
// carries the time of signing.
type Cosigner struct {
	name string
	hash uint32
	key  identity.PrivateKey
	now  func() time.Time
}

var _ note.Signer = (*Cosigner)(nil)

// NewCosigner returns the cosignature/v1 signer named name over key.
func NewCosigner(key identity.PrivateKey, name string) (*Cosigner, error) {
	if key.IsZero() {
		return nil, fmt.Errorf("%w: no key", ErrConfig)
	}
	if !validKeyName(name) {
		return nil, fmt.Errorf("%w: key name %q", ErrConfig, name)
	}
	return &Cosigner{name: name, hash: keyHash(name, algCosignatureV1, key.Public().Bytes()), key: key, now: time.Now}, nil
}

// Name implements note.Signer.
func (c *Cosigner) Name() string { return c.name }

// KeyHash implements note.Signer.
func (c *Cosigner) KeyHash() uint32 { return c.hash }

// Sign implements note.Signer: timestamp(8, big-endian Unix seconds) ||
// Ed25519 signature of "cosignature/v1\ntime <timestamp>\n" || msg, where
// msg is the checkpoint's text (C2SP tlog-cosignature).
func (c *Cosigner) Sign(msg []byte) ([]byte, error) {
	t := uint64(c.now().Unix())
	m := append([]byte("cosignature/v1\ntime "+strconv.FormatUint(t, 10)+"\n"), msg...)
	sig := binary.BigEndian.AppendUint64(make([]byte, 0, 8+ed25519.SignatureSize), t)
	return append(sig, c.key.Sign(m)...), nil
}

// CosignerKey returns the verifier key of the cosigner named name with key
// pub, "<name>+<key hash>+<base64(0x04 || key)>", as C2SP tlog-cosignature
// writes a witness's key.
func CosignerKey(name string, pub identity.PublicKey) (string, error) {
	if !validKeyName(name) {
		return "", fmt.Errorf("%w: key name %q", ErrConfig, name)
	}
	k := append([]byte{algCosignatureV1}, pub.Bytes()...)
	return fmt.Sprintf("%s+%08x+%s", name, keyHash(name, algCosignatureV1, pub.Bytes()), base64.StdEncoding.EncodeToString(k)), nil
}

// NewCosignatureVerifier returns the verifier of a cosigner's key, as
// CosignerKey writes it.
func NewCosignatureVerifier(vkey string) (note.Verifier, error) {
	v, err := fnote.NewVerifierForCosignatureV1(vkey)
	if err != nil {
		return nil, fmt.Errorf("audit: cosigner key %q: %v", vkey, err)
	}
	return v, nil
}

// keyHash is the C2SP signed-note key hash: the first 4 bytes of
// SHA-256(name || "\n" || alg || key), big-endian.
func keyHash(name string, alg byte, key []byte) uint32 {
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte{'\n', alg})
	h.Write(key)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

// validKeyName is the signed-note rule: non-empty UTF-8 without spaces or
// '+'; control characters are refused too.
func validKeyName(name string) bool {
	if name == "" || len(name) > maxString || !utf8.ValidString(name) {
		return false
	}
	for _, r := range name {
		if r == '+' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return false
		}
	}
	return true
}
