package audit

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"slices"

	"github.com/agent6/agent6/identity"
)

// secretMessage is what the node key signs to derive the commitment secret
// (SecretFromKey). Nothing else the key signs can equal it: record
// signatures start "agent6 record v1\x00", checkpoint notes end in a newline
// and start with an origin (no spaces), cosignatures start "cosignature/v1\n".
// The signature is never published.
const secretMessage = "agent6 audit commitment secret v1 (never published)"

// SecretFromKey derives a log's commitment secret from the node key: the
// SHA-256 of the key's (deterministic) Ed25519 signature of a fixed message
// that nothing else signs. The secret stays with the node; only per-record
// salts derived from it are ever disclosed.
func SecretFromKey(k identity.PrivateKey) [32]byte {
	return sha256.Sum256(append([]byte("agent6 audit secret v1\x00"), k.Sign([]byte(secretMessage))...))
}

// Committer makes and discloses a log's commitments. It is safe for
// concurrent use.
type Committer struct {
	secret [32]byte
}

// NewCommitter returns a Committer over secret (SecretFromKey).
func NewCommitter(secret [32]byte) *Committer { return &Committer{secret: secret} }

// salt derives the salt of the commitment named name in the record with
// nonce: HMAC-SHA256(secret, "agent6 audit salt v1\x00" || nonce || name).
func (c *Committer) salt(nonce [16]byte, name string) [32]byte {
	m := hmac.New(sha256.New, c.secret[:])
	m.Write([]byte("agent6 audit salt v1\x00"))
	m.Write(nonce[:])
	m.Write([]byte(name))
	var s [32]byte
	m.Sum(s[:0])
	return s
}

// Commit adds to r a commitment to value under name, instead of value
// itself: SHA-256(salt || value). It gives r a random nonce first if it has
// none. Names are lowercase a-z, 0-9, '_', '.', '-' and unique in a record.
func (c *Committer) Commit(r *Record, name string, value []byte) error {
	if err := checkCommitmentName(name); err != nil {
		return fmt.Errorf("%w: commitment: %v", ErrRecord, err)
	}
	i, found := slices.BinarySearchFunc(r.Commitments, name, func(c Commitment, n string) int {
		return cmpString(c.Name, n)
	})
	if found {
		return fmt.Errorf("%w: commitment %q twice", ErrRecord, name)
	}
	if len(r.Commitments) == maxCommitments {
		return fmt.Errorf("%w: more than %d commitments", ErrRecord, maxCommitments)
	}
	if isZero(r.Nonce[:]) {
		for isZero(r.Nonce[:]) {
			if _, err := rand.Read(r.Nonce[:]); err != nil {
				return fmt.Errorf("audit: nonce: %w", err)
			}
		}
	}
	salt := c.salt(r.Nonce, name)
	r.Commitments = slices.Insert(r.Commitments, i, Commitment{Name: name, Hash: commitHash(salt, value)})
	return nil
}

// Salt returns the salt of r's commitment named name: what a node
// discloses, for this one record, to let an authorised party open it (Commitment.Open).
// Disclosing it reveals nothing of any other commitment.
func (c *Committer) Salt(r *Record, name string) ([32]byte, error) {
	if _, ok := r.Commitment(name); !ok {
		return [32]byte{}, fmt.Errorf("%w: no commitment %q", ErrNotFound, name)
	}
	return c.salt(r.Nonce, name), nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func commitHash(salt [32]byte, value []byte) [32]byte {
	h := sha256.New()
	h.Write(salt[:])
	h.Write(value)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// Commitment returns r's commitment named name.
func (r *Record) Commitment(name string) (Commitment, bool) {
	for _, c := range r.Commitments {
		if c.Name == name {
			return c, true
		}
	}
	return Commitment{}, false
}

// Open checks that c commits to value under salt (ErrCommitment if not):
// what a party given a Disclosure runs.
func (c Commitment) Open(salt [32]byte, value []byte) error {
	h := commitHash(salt, value)
	if subtle.ConstantTimeCompare(h[:], c.Hash[:]) != 1 {
		return fmt.Errorf("%w: %q", ErrCommitment, c.Name)
	}
	return nil
}
