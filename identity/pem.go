package identity

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

const pemType = "PRIVATE KEY"

// MarshalPEM returns k as a PKCS#8 PEM block, the form
// `openssl genpkey -algorithm ed25519` writes and `openssl pkey` reads.
func (k PrivateKey) MarshalPEM() []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k.ed25519())
	if err != nil {
		panic("identity: marshal PKCS#8: " + err.Error()) // cannot fail for Ed25519
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der})
}

// ParsePrivateKeyPEM parses a PKCS#8 PEM Ed25519 private key.
func ParsePrivateKeyPEM(data []byte) (PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return PrivateKey{}, fmt.Errorf("%w: no PEM block found", ErrInvalidKey)
	}
	if block.Type != pemType {
		return PrivateKey{}, fmt.Errorf("%w: PEM block is %q, want %q (PKCS#8)", ErrInvalidKey, block.Type, pemType)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("%w: PKCS#8: %v", ErrInvalidKey, err)
	}
	ek, ok := key.(ed25519.PrivateKey)
	if !ok {
		return PrivateKey{}, fmt.Errorf("%w (found %T)", ErrNotEd25519, key)
	}
	return PrivateKeyFromSeed(ek.Seed())
}

// LoadPrivateKey reads a PKCS#8 PEM Ed25519 private key from path.
func LoadPrivateKey(path string) (PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("identity: read key: %w", err)
	}
	k, err := ParsePrivateKeyPEM(data)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// WritePrivateKey writes k to path as PKCS#8 PEM with mode 0600. It refuses
// to replace an existing file (ErrKeyExists) unless overwrite is set. The
// file appears whole or not at all.
func WritePrivateKey(path string, k PrivateKey, overwrite bool) error {
	if !overwrite {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%w: %s", ErrKeyExists, path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("identity: write key: %w", err)
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".agent6-key-*")
	if err != nil {
		return fmt.Errorf("identity: write key: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("identity: write key: %w", err)
	}
	if _, err := tmp.Write(k.MarshalPEM()); err != nil {
		tmp.Close()
		return fmt.Errorf("identity: write key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("identity: write key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("identity: write key: %w", err)
	}
	if !overwrite {
		// Link fails if path appeared meanwhile; rename would clobber it.
		if err := os.Link(tmp.Name(), path); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%w: %s", ErrKeyExists, path)
			}
			return fmt.Errorf("identity: write key: %w", err)
		}
		return nil
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("identity: write key: %w", err)
	}
	return nil
}
