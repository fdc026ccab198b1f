package identity

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"
)

// Bundle is a trust bundle: the CA certificates of the trust domains a
// node accepts. Several trust domains in one bundle is federation; several
// CAs of one trust domain is CA rotation (either one's credentials verify).
// A Bundle is immutable and safe for concurrent use.
//
// Its file form is a PEM file of CERTIFICATE blocks, such as one CA's
// ca.crt or several of them concatenated.
type Bundle struct {
	cas     map[string][]bundleCA // by trust domain name
	domains []string              // sorted
}

type bundleCA struct {
	cert *x509.Certificate
	key  PublicKey
}

// NewBundle returns a bundle of the given CA certificates, each of which
// must be an Agent6 CA certificate: self-signed, Ed25519, a CA allowed to
// sign certificates, with the one URI SAN spiffe://<trust-domain>.
// Repeated certificates count once.
func NewBundle(cas ...*x509.Certificate) (*Bundle, error) {
	if len(cas) == 0 {
		return nil, fmt.Errorf("%w: empty trust bundle", ErrBadCredential)
	}
	b := &Bundle{cas: make(map[string][]bundleCA)}
	for i, cert := range cas {
		if cert == nil {
			return nil, fmt.Errorf("%w: bundle certificate %d is nil", ErrBadCredential, i+1)
		}
		td, key, err := checkCA(cert)
		if err != nil {
			return nil, fmt.Errorf("bundle certificate %d: %w", i+1, err)
		}
		name := td.Name()
		if slices.ContainsFunc(b.cas[name], func(c bundleCA) bool { return bytes.Equal(c.cert.Raw, cert.Raw) }) {
			continue
		}
		if len(b.cas[name]) == 0 {
			b.domains = append(b.domains, name)
		}
		b.cas[name] = append(b.cas[name], bundleCA{cert: cert, key: key})
	}
	slices.Sort(b.domains)
	return b, nil
}

// ParseBundle parses a PEM trust bundle: one or more CERTIFICATE blocks,
// each an Agent6 CA certificate (see NewBundle). Text outside the blocks is
// ignored; a block of another type is an error.
func ParseBundle(data []byte) (*Bundle, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		n := len(certs) + 1
		if block.Type != certPEMType {
			return nil, fmt.Errorf("%w: bundle PEM block %d is %q, want %q", ErrBadCredential, n, block.Type, certPEMType)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: bundle certificate %d: %v", ErrBadCredential, n, err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no PEM CERTIFICATE in trust bundle", ErrBadCredential)
	}
	return NewBundle(certs...)
}

// LoadBundle reads a PEM trust bundle from path.
func LoadBundle(path string) (*Bundle, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity: read trust bundle: %w", err)
	}
	b, err := ParseBundle(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// TrustDomains returns the trust domains of b, sorted.
func (b *Bundle) TrustDomains() []string { return slices.Clone(b.domains) }

// Certificates returns the CA certificates of trustDomain (nil if b does
// not hold it). Do not modify them.
func (b *Bundle) Certificates(trustDomain string) []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range b.cas[trustDomain] {
		out = append(out, c.cert)
	}
	return out
}

// MarshalPEM returns b in its file form, trust domains in order.
func (b *Bundle) MarshalPEM() []byte {
	var buf bytes.Buffer
	for _, td := range b.domains {
		for _, c := range b.cas[td] {
			pem.Encode(&buf, &pem.Block{Type: certPEMType, Bytes: c.cert.Raw})
		}
	}
	return buf.Bytes()
}

// Verify checks that certDER is an agent credential of one of b's trust
// domains, valid at now (time.Now() if now is zero), and returns it. It
// refuses with an error wrapping
//
//   - ErrBadCredential: not a certificate; not exactly one URI SAN of the
//     form spiffe://<trust-domain>/agent/<name>; a key that is not Ed25519;
//     not exactly one IP SAN, the address derived from the certificate's
//     own key; other SANs; a missing, unknown-version or malformed Agent6
//     extension; a CA certificate; an unknown critical extension.
//   - ErrUntrusted: the trust domain named in the URI SAN is not in b, or
//     no CA of that trust domain signed the certificate.
//   - ErrExpired: now is outside the validity period of the certificate or
//     of every CA of its trust domain that signed it.
//
// Verify does not consult revocations: see Revocation.Matches.
func (b *Bundle) Verify(certDER []byte, now time.Time) (*Credential, error) {
	if now.IsZero() {
		now = time.Now()
	}
	// The Credential keeps the certificate, which aliases its input.
	leaf, err := x509.ParseCertificate(bytes.Clone(certDER))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCredential, err)
	}
	id, name, err := agentIDOf(leaf)
	if err != nil {
		return nil, err
	}
	td := id.TrustDomain().Name()

	// Trust: a CA of the trust domain the credential names signed it.
	cas := b.cas[td]
	if len(cas) == 0 {
		return nil, fmt.Errorf("%w: %s: trust domain %q is not in the bundle", ErrUntrusted, id, td)
	}
	// Candidates by name; the signature is checked once, by crypto/x509's
	// path validation below (checking it here as well cost a second
	// Ed25519 verification per credential: 1.4 CPU-s in a 200-node join).
	var signers []*x509.Certificate
	for _, ca := range cas {
		if bytes.Equal(leaf.RawIssuer, ca.cert.RawSubject) {
			signers = append(signers, ca.cert)
		}
	}
	if len(signers) == 0 {
		return nil, fmt.Errorf("%w: %s: not issued by a CA of trust domain %q", ErrUntrusted, id, td)
	}

	// Validity, of the credential and of a CA that signed it.
	if now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("%w: %s is not valid before %v", ErrExpired, id, leaf.NotBefore.UTC())
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("%w: %s expired at %v", ErrExpired, id, leaf.NotAfter.UTC())
	}
	signers = slices.DeleteFunc(signers, func(ca *x509.Certificate) bool {
		return now.Before(ca.NotBefore) || now.After(ca.NotAfter)
	})
	if len(signers) == 0 {
		return nil, fmt.Errorf("%w: %s: the CA of trust domain %q that signed it is not valid at %v", ErrExpired, id, td, now.UTC())
	}

	// Shape.
	if leaf.IsCA || leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		return nil, fmt.Errorf("%w: %s is a CA certificate, not an agent credential", ErrBadCredential, id)
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return nil, fmt.Errorf("%w: %s: key usage lacks digitalSignature", ErrBadCredential, id)
	}
	if len(leaf.UnhandledCriticalExtensions) > 0 {
		return nil, fmt.Errorf("%w: %s: unknown critical extension %v", ErrBadCredential, id, leaf.UnhandledCriticalExtensions[0])
	}
	pub, ok := leaf.PublicKey.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: %s: key is %v, want Ed25519", ErrBadCredential, id, leaf.PublicKeyAlgorithm)
	}
	key, err := PublicKeyFromBytes(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadCredential, id, err)
	}
	addr, err := key.Addr()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadCredential, id, err)
	}
	if len(leaf.IPAddresses) != 1 {
		return nil, fmt.Errorf("%w: %s: %d IP SANs, want exactly one, %s", ErrBadCredential, id, len(leaf.IPAddresses), addr)
	}
	if ip, ok := netip.AddrFromSlice(leaf.IPAddresses[0]); !ok || ip != addr {
		return nil, fmt.Errorf("%w: %s: IP SAN %v is not %s, the address of the certificate's key", ErrBadCredential, id, leaf.IPAddresses[0], addr)
	}
	if len(leaf.DNSNames)+len(leaf.EmailAddresses) > 0 {
		return nil, fmt.Errorf("%w: %s: DNS or email SANs", ErrBadCredential, id)
	}
	var ext []byte
	for _, e := range leaf.Extensions {
		if e.Id.Equal(oidCredentialExtension) {
			ext = e.Value
		}
	}
	if ext == nil {
		return nil, fmt.Errorf("%w: %s: no Agent6 credential extension (%s)", ErrBadCredential, id, CredentialExtensionOID)
	}
	groups, roles, err := parseCredentialExtension(ext)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadCredential, id, err)
	}

	// The signature, and what is left of the standard path validation
	// (name chaining, key identifiers, path length, extended key usage),
	// is crypto/x509's.
	pool := x509.NewCertPool()
	for _, ca := range signers {
		pool.AddCert(ca)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:       pool,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			return nil, fmt.Errorf("%w: %s: %v", ErrExpired, id, err)
		}
		return nil, fmt.Errorf("%w: %s: not signed by a CA of trust domain %q: %v", ErrUntrusted, id, td, err)
	}

	return &Credential{
		Cert:        leaf,
		Raw:         leaf.Raw,
		ID:          id.String(),
		TrustDomain: td,
		Name:        name,
		Groups:      groups,
		Roles:       roles,
		AgentKey:    key,
		Addr:        addr,
		NotBefore:   leaf.NotBefore,
		NotAfter:    leaf.NotAfter,
		Serial:      serialString(leaf),
	}, nil
}
