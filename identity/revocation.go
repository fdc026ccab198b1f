package identity

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Revocation withdraws one agent credential before it expires. It travels
// as the payload of a SignedRecord of type RecordRevocation signed by the
// key of a CA of its trust domain; any node may inject it and gossip
// spreads it. It need only be kept until NotAfter, when the credential it
// names expires anyway.
//
// The payload is compact JSON, fields in this order, times in Unix
// seconds, and nothing else (a reader refuses any other encoding):
//
//	{"v":1,"td":"example.org","id":"spiffe://example.org/agent/alice",
//	 "serial":"4f1c…","sha256":"<64 hex digits>","not_after":1767323045,"revoked_at":1767236645}
type Revocation struct {
	TrustDomain string
	ID          string   // the SPIFFE ID of the revoked credential, for logs
	Serial      string   // its serial number, lowercase hex (Credential.Serial)
	CertSHA256  [32]byte // SHA-256 of its DER: what Matches compares
	NotAfter    time.Time
	RevokedAt   time.Time
}

const revocationVersion = 1

type revocationJSON struct {
	V         int    `json:"v"`
	TD        string `json:"td"`
	ID        string `json:"id"`
	Serial    string `json:"serial"`
	SHA256    string `json:"sha256"`
	NotAfter  int64  `json:"not_after"`
	RevokedAt int64  `json:"revoked_at"`
}

// Matches reports whether r revokes c: same trust domain, same certificate.
func (r *Revocation) Matches(c *Credential) bool {
	return c != nil && r.TrustDomain == c.TrustDomain && r.CertSHA256 == sha256.Sum256(c.Raw)
}

// Revoke returns a revocation of certDER, a credential this CA issued,
// signed with the CA key, revoked at now (time.Now() if zero). Expired
// credentials may be revoked too.
func (ca *CA) Revoke(certDER []byte, now time.Time) (SignedRecord, error) {
	if now.IsZero() {
		now = time.Now()
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return SignedRecord{}, fmt.Errorf("identity: revoke: %w: %v", ErrBadCredential, err)
	}
	if cert.IsCA {
		return SignedRecord{}, fmt.Errorf("identity: revoke: %w: a CA certificate, not an agent credential", ErrBadCredential)
	}
	if !bytes.Equal(cert.RawIssuer, ca.cert.RawSubject) || cert.CheckSignatureFrom(ca.cert) != nil {
		return SignedRecord{}, fmt.Errorf("identity: revoke: %w: not issued by this CA", ErrUntrusted)
	}
	id, _, err := agentIDOf(cert)
	if err != nil {
		return SignedRecord{}, fmt.Errorf("identity: revoke: %w", err)
	}
	if id.TrustDomain() != ca.td {
		return SignedRecord{}, fmt.Errorf("identity: revoke: %w: %s is not in trust domain %q", ErrBadCredential, id, ca.td.Name())
	}
	r := &Revocation{
		TrustDomain: ca.td.Name(),
		ID:          id.String(),
		Serial:      serialString(cert),
		CertSHA256:  sha256.Sum256(certDER),
		NotAfter:    cert.NotAfter,
		RevokedAt:   now,
	}
	return SignRecord(ca.key, RecordRevocation, r.marshal())
}

func (r *Revocation) marshal() []byte {
	b, err := json.Marshal(revocationJSON{
		V:         revocationVersion,
		TD:        r.TrustDomain,
		ID:        r.ID,
		Serial:    r.Serial,
		SHA256:    hex.EncodeToString(r.CertSHA256[:]),
		NotAfter:  r.NotAfter.Unix(),
		RevokedAt: r.RevokedAt.Unix(),
	})
	if err != nil {
		panic("identity: marshal revocation: " + err.Error()) // cannot fail: strings and integers
	}
	return b
}

// parseRevocation decodes a revocation payload, refusing anything but the
// canonical version 1 encoding.
func parseRevocation(b []byte) (*Revocation, error) {
	var j revocationJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("revocation payload: %v", err)
	}
	if j.V != revocationVersion {
		return nil, fmt.Errorf("revocation version %d, want %d", j.V, revocationVersion)
	}
	td, err := parseTrustDomain(j.TD)
	if err != nil {
		return nil, fmt.Errorf("revocation: %v", err)
	}
	id, err := spiffeid.FromString(j.ID)
	if err != nil || !id.MemberOf(td) {
		return nil, fmt.Errorf("revocation: id %q is not a SPIFFE ID in trust domain %q", j.ID, j.TD)
	}
	if !isCanonicalHex(j.Serial, 40) {
		return nil, fmt.Errorf("revocation: serial %q is not a lowercase hex number", j.Serial)
	}
	sum, err := hex.DecodeString(j.SHA256)
	if err != nil || len(sum) != sha256.Size {
		return nil, fmt.Errorf("revocation: sha256 is not %d hex digits", 2*sha256.Size)
	}
	r := &Revocation{
		TrustDomain: td.Name(),
		ID:          id.String(),
		Serial:      j.Serial,
		CertSHA256:  [32]byte(sum),
		NotAfter:    time.Unix(j.NotAfter, 0).UTC(),
		RevokedAt:   time.Unix(j.RevokedAt, 0).UTC(),
	}
	// One revocation, one encoding: gossip can compare records bytewise.
	if !bytes.Equal(r.marshal(), b) {
		return nil, fmt.Errorf("revocation payload is not in canonical form")
	}
	return r, nil
}

// isCanonicalHex reports whether s is a lowercase hex number of 1 to max
// digits without leading zeros, as big.Int.Text(16) writes it.
func isCanonicalHex(s string, max int) bool {
	if len(s) == 0 || len(s) > max || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// VerifyRevocation checks that rec (decoded, verified or not) is a
// revocation signed by the key of a CA that b holds for the revocation's
// trust domain, and returns it. The signature is checked last, after the
// checks that cost nothing. It
// refuses with ErrBadRecord (wrong type, bad signature, malformed payload)
// or ErrUntrusted (trust domain not in b, signer not one of its CAs).
func (b *Bundle) VerifyRevocation(rec SignedRecord) (*Revocation, error) {
	if rec.Type != RecordRevocation {
		return nil, fmt.Errorf("%w: %s record, want %s", ErrBadRecord, rec.Type, RecordRevocation)
	}
	// The cheap checks first, on the still unauthenticated payload: a
	// record no CA of the bundle signed costs no signature check.
	r, err := parseRevocation(rec.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	if len(b.cas[r.TrustDomain]) == 0 {
		return nil, fmt.Errorf("%w: revocation: trust domain %q is not in the bundle", ErrUntrusted, r.TrustDomain)
	}
	if !b.IsCAKey(r.TrustDomain, rec.Signer) {
		return nil, fmt.Errorf("%w: revocation of %s: signer %s is not a CA of trust domain %q", ErrUntrusted, r.ID, rec.Signer, r.TrustDomain)
	}
	if err := rec.Verify(); err != nil {
		return nil, err
	}
	return r, nil
}

// IsCAKey reports whether k is the key of a CA that b holds for
// trustDomain: the check that makes a record CA-signed (revocations,
// policy documents). It does not look at the CA's validity period.
func (b *Bundle) IsCAKey(trustDomain string, k PublicKey) bool {
	for _, ca := range b.cas[trustDomain] {
		if ca.key.Equal(k) {
			return true
		}
	}
	return false
}

// RevocationPEMType is the PEM block type of a revocation file.
const RevocationPEMType = "AGENT6 REVOCATION"

// MarshalRevocationPEM returns the file form of a revocation: its
// SignedRecord encoding (SignedRecord.Marshal) in a PEM block of type
// "AGENT6 REVOCATION", easy to paste.
func MarshalRevocationPEM(rec SignedRecord) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: RevocationPEMType, Bytes: rec.Marshal()})
}

// ParseRevocationPEM decodes a revocation file and checks the record's own
// signature and type. Whether its signer is a CA is Bundle.VerifyRevocation's
// question.
func ParseRevocationPEM(data []byte) (SignedRecord, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return SignedRecord{}, fmt.Errorf("%w: no PEM block found (want %q)", ErrBadRecord, RevocationPEMType)
	}
	if block.Type != RevocationPEMType {
		return SignedRecord{}, fmt.Errorf("%w: PEM block is %q, want %q", ErrBadRecord, block.Type, RevocationPEMType)
	}
	rec, err := ParseSignedRecord(block.Bytes)
	if err != nil {
		return SignedRecord{}, err
	}
	if rec.Type != RecordRevocation {
		return SignedRecord{}, fmt.Errorf("%w: %s record, want %s", ErrBadRecord, rec.Type, RecordRevocation)
	}
	return rec, nil
}

// WriteRevocation writes rec to path in the revocation file form (see
// MarshalRevocationPEM), mode 0644. Unless overwrite is set it refuses to
// replace an existing file (ErrFileExists).
func WriteRevocation(path string, rec SignedRecord, overwrite bool) error {
	return writeFile(path, MarshalRevocationPEM(rec), 0o644, overwrite)
}

// LoadRevocation reads a revocation file (see ParseRevocationPEM).
func LoadRevocation(path string) (SignedRecord, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return SignedRecord{}, fmt.Errorf("identity: read revocation: %w", err)
	}
	rec, err := ParseRevocationPEM(data)
	if err != nil {
		return SignedRecord{}, fmt.Errorf("%s: %w", path, err)
	}
	return rec, nil
}
