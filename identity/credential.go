package identity

// Organisation credentials: X.509-SVIDs that a trust domain's CA issues to
// its agents (ca.go), checked against a trust bundle (bundle.go) and
// withdrawn by signed revocations (revocation.go).
//
// An agent credential is an X.509 v3 certificate, signed by the CA, with
//
//   - an Ed25519 subject public key: the agent key;
//   - exactly one URI SAN, spiffe://<trust-domain>/agent/<name>;
//   - exactly one IP SAN: the Agent6 address derived from that key;
//   - key usage digitalSignature, extended key usages serverAuth and
//     clientAuth, basic constraints CA:FALSE;
//   - the Agent6 credential extension (CredentialExtensionOID), carrying
//     the agent's groups and roles.

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Roles a credential can grant. They are the only roles a CA issues.
const (
	RoleWaypoint = "waypoint" // may be named as a mandatory waypoint
	RoleRelay    = "relay"    // forwards WireGuard ciphertext for NATed peers
	RoleAuditor  = "auditor"  // may gather flow records across nodes
	RolePolicy   = "policy"   // may sign policy documents
)

func knownRole(r string) bool {
	switch r {
	case RoleWaypoint, RoleRelay, RoleAuditor, RolePolicy:
		return true
	}
	return false
}

// CredentialExtensionOID is the object identifier of the Agent6 credential
// extension, Agent6's own arc under the IANA private enterprise number
// 58270 (1.3.6.1.4.1.58270): .1 is X.509 extensions, .1.1 this one. The
// extension's value is the DER of
//
//	AgentCredential ::= SEQUENCE {
//	    version INTEGER,                  -- 1
//	    groups  SEQUENCE OF UTF8String,   -- sorted, no duplicates
//	    roles   SEQUENCE OF UTF8String }  -- sorted, no duplicates
//
// A reader refuses any other version.
const CredentialExtensionOID = "1.3.6.1.4.1.58270.1.1"

var oidCredentialExtension = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 58270, 1, 1}

const credentialExtensionVersion = 1

// Limits on what a credential carries.
const (
	// MaxNameLen bounds an agent name: it is a DNS label in
	// <name>.<trust-domain>.agent6.
	MaxNameLen = 63
	// MaxLabelLen bounds one group or role.
	MaxLabelLen = 64
	// MaxLabels bounds the groups (and, separately, the roles) of one
	// credential.
	MaxLabels = 32
)

// DefaultCredentialTTL is the lifetime of an agent credential when the
// request names none. Credentials are short-lived and renewed.
const DefaultCredentialTTL = 24 * time.Hour

// Credential is an agent credential that Bundle.Verify accepted. Treat it
// as read-only.
type Credential struct {
	Cert *x509.Certificate
	Raw  []byte // the certificate's DER

	ID          string // spiffe://<trust-domain>/agent/<name>
	TrustDomain string
	Name        string

	Groups []string // sorted, no duplicates
	Roles  []string // sorted, no duplicates, known roles only

	AgentKey PublicKey
	Addr     netip.Addr // derived from AgentKey; the certificate's IP SAN

	NotBefore, NotAfter time.Time
	Serial              string // the certificate serial number, lowercase hex
}

// HasRole reports whether c grants role r.
func (c *Credential) HasRole(r string) bool { return slices.Contains(c.Roles, r) }

// HasGroup reports whether c names group g.
func (c *Credential) HasGroup(g string) bool { return slices.Contains(c.Groups, g) }

// serialString formats a certificate serial number the way Credential and
// Revocation carry it.
func serialString(cert *x509.Certificate) string {
	if cert.SerialNumber == nil {
		return ""
	}
	return cert.SerialNumber.Text(16)
}

// parseTrustDomain checks that s is a bare SPIFFE trust domain name, such
// as "example.org".
func parseTrustDomain(s string) (spiffeid.TrustDomain, error) {
	if strings.Contains(s, ":/") {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain %q: give the bare name, not a SPIFFE ID", s)
	}
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain %q: %v", s, err)
	}
	if len(s) > 255 {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain is %d bytes, more than 255", len(s))
	}
	return td, nil
}

// validateName checks an agent name: one SPIFFE path segment of at most
// MaxNameLen bytes (letters, digits, '-', '.', '_'; not "." or "..").
func validateName(name string) error {
	if err := spiffeid.ValidatePathSegment(name); err != nil {
		return fmt.Errorf("name %q: %v", name, err)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("name %q is %d bytes, more than %d", name, len(name), MaxNameLen)
	}
	return nil
}

// validateLabel checks a group or role: the characters of a SPIFFE path
// segment, at most MaxLabelLen bytes.
func validateLabel(kind, s string) error {
	if err := spiffeid.ValidatePathSegment(s); err != nil {
		return fmt.Errorf("%s %q: %v", kind, s, err)
	}
	if len(s) > MaxLabelLen {
		return fmt.Errorf("%s %q is %d bytes, more than %d", kind, s, len(s), MaxLabelLen)
	}
	return nil
}

// canonicalLabels returns labels sorted with duplicates removed.
func canonicalLabels(labels []string) []string {
	out := slices.Clone(labels)
	slices.Sort(out)
	return slices.Compact(out)
}

// agentIDOf returns the SPIFFE ID of an agent credential: its one URI SAN,
// which must be spiffe://<trust-domain>/agent/<name>.
func agentIDOf(cert *x509.Certificate) (id spiffeid.ID, name string, err error) {
	if len(cert.URIs) != 1 {
		return spiffeid.ID{}, "", fmt.Errorf("%w: %d URI SANs, want exactly one SPIFFE ID", ErrBadCredential, len(cert.URIs))
	}
	id, err = spiffeid.FromURI(cert.URIs[0])
	if err != nil {
		return spiffeid.ID{}, "", fmt.Errorf("%w: URI SAN %q is not a SPIFFE ID: %v", ErrBadCredential, cert.URIs[0].String(), err)
	}
	name, ok := strings.CutPrefix(id.Path(), "/agent/")
	if !ok {
		return spiffeid.ID{}, "", fmt.Errorf("%w: SPIFFE ID %s is not of the form spiffe://<trust-domain>/agent/<name>", ErrBadCredential, id)
	}
	if err := validateName(name); err != nil {
		return spiffeid.ID{}, "", fmt.Errorf("%w: SPIFFE ID %s: %v", ErrBadCredential, id, err)
	}
	return id, name, nil
}

// credentialExtension is the v1 value of the Agent6 credential extension.
// Strings are asn1.RawValues so that they are always UTF8String (the
// encoding/asn1 default for []string picks PrintableString when it can).
type credentialExtension struct {
	Version int
	Groups  []asn1.RawValue
	Roles   []asn1.RawValue
}

func utf8Strings(ss []string) []asn1.RawValue {
	out := make([]asn1.RawValue, 0, len(ss))
	for _, s := range ss {
		out = append(out, asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagUTF8String, Bytes: []byte(s)})
	}
	return out
}

// marshalCredentialExtension encodes groups and roles, which must already be
// valid and canonical.
//
// The extension is marked non-critical. It only ever grants (group
// membership for policy, roles for privileges); a verifier that does not
// understand it grants nothing more than the SPIFFE ID, which is the safe
// reading. Marking it critical would make `openssl verify`, Go's
// x509.Verify and every other X.509 tool reject Agent6 credentials outright.
// Agent6's own verifier requires the extension regardless.
func marshalCredentialExtension(groups, roles []string) (pkix.Extension, error) {
	v, err := asn1.Marshal(credentialExtension{
		Version: credentialExtensionVersion,
		Groups:  utf8Strings(groups),
		Roles:   utf8Strings(roles),
	})
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("identity: encode credential extension: %w", err)
	}
	return pkix.Extension{Id: oidCredentialExtension, Critical: false, Value: v}, nil
}

// parseCredentialExtension decodes the extension value b. It accepts only
// version 1 in canonical DER. Roles it does not know are dropped (a newer
// CA may grant roles this node has no use for), malformed ones refused.
// Its errors wrap no sentinel; Verify adds ErrBadCredential.
func parseCredentialExtension(b []byte) (groups, roles []string, err error) {
	var outer asn1.RawValue
	if rest, err := asn1.Unmarshal(b, &outer); err != nil || len(rest) != 0 ||
		outer.Class != asn1.ClassUniversal || outer.Tag != asn1.TagSequence || !outer.IsCompound {
		return nil, nil, errors.New("credential extension is not a DER SEQUENCE")
	}
	var version int
	if _, err := asn1.Unmarshal(outer.Bytes, &version); err != nil {
		return nil, nil, errors.New("credential extension has no version")
	}
	if version != credentialExtensionVersion {
		return nil, nil, fmt.Errorf("credential extension version %d, want %d", version, credentialExtensionVersion)
	}
	var ext credentialExtension
	if rest, err := asn1.Unmarshal(b, &ext); err != nil || len(rest) != 0 {
		return nil, nil, errors.New("credential extension does not decode")
	}
	// Re-encoding must give b back: no trailing fields, no other string
	// types, no non-canonical lengths.
	if again, err := asn1.Marshal(ext); err != nil || string(again) != string(b) {
		return nil, nil, errors.New("credential extension is not canonical DER")
	}
	groups, err = decodeLabels("group", ext.Groups)
	if err != nil {
		return nil, nil, err
	}
	all, err := decodeLabels("role", ext.Roles)
	if err != nil {
		return nil, nil, err
	}
	for _, r := range all {
		if knownRole(r) {
			roles = append(roles, r)
		}
	}
	return groups, roles, nil
}

func decodeLabels(kind string, raw []asn1.RawValue) ([]string, error) {
	if len(raw) > MaxLabels {
		return nil, fmt.Errorf("credential extension: %d %ss, more than %d", len(raw), kind, MaxLabels)
	}
	out := make([]string, 0, len(raw))
	for _, v := range raw {
		if v.Class != asn1.ClassUniversal || v.Tag != asn1.TagUTF8String || v.IsCompound || !utf8.Valid(v.Bytes) {
			return nil, fmt.Errorf("credential extension: a %s is not a UTF8String", kind)
		}
		s := string(v.Bytes)
		if err := validateLabel(kind, s); err != nil {
			return nil, fmt.Errorf("credential extension: %v", err)
		}
		out = append(out, s)
	}
	return canonicalLabels(out), nil
}
