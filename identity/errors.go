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

	// ErrFileExists reports a refusal to overwrite an existing certificate,
	// revocation or CA file.
	ErrFileExists = errors.New("identity: file already exists")

	// Refusals of an organisation credential (Bundle.Verify), one per
	// reason so that callers can count them.

	// ErrBadCredential reports a certificate that does not parse or is not
	// an Agent6 agent credential: not Ed25519, wrong or missing SANs, an IP
	// SAN that is not its key's address, a missing or unknown-version
	// Agent6 extension, a CA certificate presented as a leaf.
	ErrBadCredential = errors.New("identity: bad credential")
	// ErrUntrusted reports a credential or revocation whose trust domain is
	// not in the bundle, or that no CA of its trust domain signed.
	ErrUntrusted = errors.New("identity: untrusted credential")
	// ErrExpired reports a credential outside its validity period, or
	// issued by a CA outside its own: expired or not yet valid.
	ErrExpired = errors.New("identity: credential expired or not yet valid")
	// ErrRevoked reports a credential that a verified Revocation matches.
	// Bundle.Verify does not consult revocations; callers that hold them
	// (Revocation.Matches) refuse with this error.
	ErrRevoked = errors.New("identity: credential revoked")
)
