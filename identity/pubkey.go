package identity

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

const publicPEMType = "PUBLIC KEY"

// MarshalPEM returns p as a PEM "PUBLIC KEY" block (SubjectPublicKeyInfo),
// the form `openssl pkey -pubout` writes. A CA needs only this to issue a
// credential; the agent keeps its private key.
func (p PublicKey) MarshalPEM() []byte {
	der, err := x509.MarshalPKIXPublicKey(ed25519.PublicKey(p.k[:]))
	if err != nil {
		panic("identity: marshal PKIX: " + err.Error()) // cannot fail for Ed25519
	}
	return pem.EncodeToMemory(&pem.Block{Type: publicPEMType, Bytes: der})
}

// ParsePublicKeyPEM returns the Ed25519 public key in data: a PEM
// "PUBLIC KEY" block, or a PKCS#8 "PRIVATE KEY" block whose public half it
// takes.
func ParsePublicKeyPEM(data []byte) (PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return PublicKey{}, fmt.Errorf("%w: no PEM block found", ErrInvalidKey)
	}
	switch block.Type {
	case pemType:
		k, err := ParsePrivateKeyPEM(data)
		if err != nil {
			return PublicKey{}, err
		}
		return k.Public(), nil
	case publicPEMType:
		key, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return PublicKey{}, fmt.Errorf("%w: PKIX: %v", ErrInvalidKey, err)
		}
		ek, ok := key.(ed25519.PublicKey)
		if !ok {
			return PublicKey{}, fmt.Errorf("%w: public key is %T, want Ed25519", ErrInvalidKey, key)
		}
		return PublicKeyFromBytes(ek)
	}
	return PublicKey{}, fmt.Errorf("%w: PEM block is %q, want %q or %q", ErrInvalidKey, block.Type, publicPEMType, pemType)
}

// LoadPublicKey reads an Ed25519 public key from path (see
// ParsePublicKeyPEM).
func LoadPublicKey(path string) (PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return PublicKey{}, fmt.Errorf("identity: read key: %w", err)
	}
	k, err := ParsePublicKeyPEM(data)
	if err != nil {
		return PublicKey{}, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}
