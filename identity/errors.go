package identity

import "errors"

// Errors that callers branch on.
var (
	// ErrInvalidKey reports key material that does not decode to a usable key.
	ErrInvalidKey = errors.New("identity: invalid key")
	// ErrNotEd25519 reports a PKCS#8 file holding some other kind of key.
	ErrNotEd25519 = errors.New("identity: not an Ed25519 private key")
	// ErrKeyExists reports a refusal to overwrite an existing key file.
	ErrKeyExists = errors.New("identity: key file already exists")
)
