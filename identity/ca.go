package identity

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultCATTL is the lifetime of a CA certificate when NewCA is given none.
const DefaultCATTL = 365 * 24 * time.Hour

// certBackdate is how far before "now" a new certificate becomes valid, so
// that a peer whose clock is a little behind does not refuse it.
const certBackdate = time.Minute

// Files of a CA directory (CA.WriteFiles, LoadCA).
const (
	CACertFile = "ca.crt" // PEM CERTIFICATE, mode 0644; also a trust bundle
	CAKeyFile  = "ca.key" // PKCS#8 PEM Ed25519 key, mode 0600
)

const certPEMType = "CERTIFICATE"

// CA is the certificate authority of one trust domain: an Ed25519 key and
// its self-signed CA certificate, whose one URI SAN is spiffe://<trust-domain>.
// A CA is immutable and safe for concurrent use.
type CA struct {
	cert *x509.Certificate
	key  PrivateKey
	td   spiffeid.TrustDomain
}

// NewCA creates a CA for trustDomain (a bare name such as "example.org")
// with a new random key, valid from now for ttl (DefaultCATTL if zero).
// The zero now means time.Now().
func NewCA(trustDomain string, ttl time.Duration, now time.Time) (*CA, error) {
	if now.IsZero() {
		now = time.Now()
	}
	key, err := GeneratePrivateKey()
	if err != nil {
		return nil, err
	}
	return newCA(trustDomain, ttl, now, key, rand.Reader)
}

// newCA makes the CA certificate for key, reading its serial from r.
func newCA(trustDomain string, ttl time.Duration, now time.Time, key PrivateKey, r io.Reader) (*CA, error) {
	td, err := parseTrustDomain(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("identity: new CA: %v", err)
	}
	if ttl < 0 {
		return nil, fmt.Errorf("identity: new CA: negative TTL %v", ttl)
	}
	if ttl == 0 {
		ttl = DefaultCATTL
	}
	serial, err := newSerial(r)
	if err != nil {
		return nil, fmt.Errorf("identity: new CA: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// The serialNumber attribute keeps the names of successive CAs of
		// one trust domain apart (RFC 5280 wants distinct CA names).
		Subject: pkix.Name{
			Organization: []string{"Agent6"},
			CommonName:   "Agent6 CA " + td.Name(),
			SerialNumber: serial.Text(16),
		},
		NotBefore:             now.Add(-certBackdate),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0, // issues agent credentials only, no intermediates
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(r, tmpl, tmpl, key.ed25519().Public(), key.ed25519())
	if err != nil {
		return nil, fmt.Errorf("identity: new CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: new CA: %w", err)
	}
	return &CA{cert: cert, key: key, td: td}, nil
}

// newSerial returns a random certificate serial number: 16 octets, the
// top bits 01 so that it is positive and of fixed length, 126 bits random.
func newSerial(r io.Reader) (*big.Int, error) {
	var b [16]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	b[0] &= 0x7f
	b[0] |= 0x40
	return new(big.Int).SetBytes(b[:]), nil
}

// TrustDomain returns the CA's trust domain name, e.g. "example.org".
func (ca *CA) TrustDomain() string { return ca.td.Name() }

// Certificate returns the CA certificate. Do not modify it.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// PublicKey returns the CA's Ed25519 key, the signer of its revocations.
func (ca *CA) PublicKey() PublicKey { return ca.key.Public() }

// SignPolicy signs payload, an encoded policy document of the CA's trust
// domain, as a record of type RecordPolicy with the CA key. What the
// payload says is the policy package's business; Bundle.IsCAKey is how a
// verifier checks the signer.
func (ca *CA) SignPolicy(payload []byte) (SignedRecord, error) {
	return SignRecord(ca.key, RecordPolicy, payload)
}

// CertificatePEM returns the CA certificate as PEM: a trust bundle of one.
func (ca *CA) CertificatePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: certPEMType, Bytes: ca.cert.Raw})
}

// WriteFiles writes dir/ca.crt (PEM, 0644) and dir/ca.key (PKCS#8 PEM,
// 0600), creating dir (0700) if needed. Unless overwrite is set it refuses,
// before writing anything, if either file exists (ErrFileExists,
// ErrKeyExists).
func (ca *CA) WriteFiles(dir string, overwrite bool) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("identity: write CA: %w", err)
	}
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	if !overwrite {
		for _, p := range []struct {
			path string
			err  error
		}{{keyPath, ErrKeyExists}, {certPath, ErrFileExists}} {
			if _, err := os.Lstat(p.path); err == nil {
				return fmt.Errorf("%w: %s", p.err, p.path)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("identity: write CA: %w", err)
			}
		}
	}
	if err := WritePrivateKey(keyPath, ca.key, overwrite); err != nil {
		return err
	}
	return writeFile(certPath, ca.CertificatePEM(), 0o644, overwrite)
}

// LoadCA reads a CA from dir/ca.crt and dir/ca.key, checking that the
// certificate is a valid Agent6 CA certificate and that the key is its key.
func LoadCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	data, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("identity: read CA: %w", err)
	}
	der, err := parseCertificatePEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %v", certPath, ErrBadCredential, err)
	}
	td, caPub, err := checkCA(cert)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	key, err := LoadPrivateKey(keyPath)
	if err != nil {
		return nil, err
	}
	if !key.Public().Equal(caPub) {
		return nil, fmt.Errorf("%w: %s is not the key of %s", ErrInvalidKey, keyPath, certPath)
	}
	return &CA{cert: cert, key: key, td: td}, nil
}

// checkCA checks that cert is an Agent6 CA certificate: a self-signed
// Ed25519 CA certificate allowed to sign certificates, whose only SAN is
// the URI spiffe://<trust-domain>. It returns the trust domain and the
// CA's key. It does not look at the validity period.
func checkCA(cert *x509.Certificate) (td spiffeid.TrustDomain, key PublicKey, err error) {
	bad := func(format string, a ...any) (spiffeid.TrustDomain, PublicKey, error) {
		return spiffeid.TrustDomain{}, PublicKey{}, fmt.Errorf("%w: CA certificate: %s", ErrBadCredential, fmt.Sprintf(format, a...))
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return bad("not a CA (basic constraints)")
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return bad("key usage lacks certificate signing")
	}
	if len(cert.UnhandledCriticalExtensions) > 0 {
		return bad("unknown critical extension %v", cert.UnhandledCriticalExtensions[0])
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok {
		return bad("key is %v, want Ed25519", cert.PublicKeyAlgorithm)
	}
	key, err = PublicKeyFromBytes(pub)
	if err != nil {
		return bad("%v", err)
	}
	if !bytes.Equal(cert.RawIssuer, cert.RawSubject) || cert.CheckSignatureFrom(cert) != nil {
		return bad("not self-signed")
	}
	if len(cert.DNSNames)+len(cert.EmailAddresses)+len(cert.IPAddresses) > 0 || len(cert.URIs) != 1 {
		return bad("want exactly one SAN, the URI spiffe://<trust-domain>")
	}
	id, err := spiffeid.FromURI(cert.URIs[0])
	if err != nil {
		return bad("URI SAN %q: %v", cert.URIs[0].String(), err)
	}
	if id.Path() != "" {
		return bad("URI SAN %s has a path, want spiffe://<trust-domain>", id)
	}
	return id.TrustDomain(), key, nil
}

// IssueRequest says what credential to issue.
type IssueRequest struct {
	Key    PublicKey     // the agent's Ed25519 key
	Name   string        // one SPIFFE path segment: spiffe://<td>/agent/<Name>
	Groups []string      // labels for policy; sorted and deduplicated on issue
	Roles  []string      // RoleWaypoint, RoleRelay, RoleAuditor, RolePolicy
	TTL    time.Duration // DefaultCredentialTTL if zero; cut to the CA's expiry
}

// Issue returns the DER of a new agent credential for req, valid from now.
// The credential never outlives the CA certificate. The zero now means
// time.Now().
func (ca *CA) Issue(req IssueRequest, now time.Time) (certDER []byte, err error) {
	if now.IsZero() {
		now = time.Now()
	}
	return ca.issue(req, now, rand.Reader)
}

func (ca *CA) issue(req IssueRequest, now time.Time, r io.Reader) ([]byte, error) {
	tmpl, err := ca.template(req, now, r)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(r, tmpl, ca.cert, ed25519.PublicKey(req.Key.Bytes()), ca.key.ed25519())
	if err != nil {
		return nil, fmt.Errorf("identity: issue: %w", err)
	}
	return der, nil
}

// template returns the certificate template of the credential for req.
func (ca *CA) template(req IssueRequest, now time.Time, r io.Reader) (*x509.Certificate, error) {
	if req.Key.IsZero() {
		return nil, errors.New("identity: issue: no agent key")
	}
	if req.Key.Equal(ca.key.Public()) {
		return nil, errors.New("identity: issue: the agent key is the CA key")
	}
	addr, err := req.Key.Addr()
	if err != nil {
		return nil, fmt.Errorf("identity: issue: %w", err)
	}
	if err := validateName(req.Name); err != nil {
		return nil, fmt.Errorf("identity: issue: %v", err)
	}
	groups, roles := canonicalLabels(req.Groups), canonicalLabels(req.Roles)
	if len(groups) > MaxLabels || len(roles) > MaxLabels {
		return nil, fmt.Errorf("identity: issue: at most %d groups and %d roles", MaxLabels, MaxLabels)
	}
	for _, g := range groups {
		if err := validateLabel("group", g); err != nil {
			return nil, fmt.Errorf("identity: issue: %v", err)
		}
	}
	for _, role := range roles {
		if !knownRole(role) {
			return nil, fmt.Errorf("identity: issue: unknown role %q (want %s, %s, %s or %s)",
				role, RoleWaypoint, RoleRelay, RoleAuditor, RolePolicy)
		}
	}
	if req.TTL < 0 {
		return nil, fmt.Errorf("identity: issue: negative TTL %v", req.TTL)
	}
	ttl := req.TTL
	if ttl == 0 {
		ttl = DefaultCredentialTTL
	}
	if now.Before(ca.cert.NotBefore) || !now.Before(ca.cert.NotAfter) {
		return nil, fmt.Errorf("%w: issue: CA certificate is valid from %v to %v, not at %v",
			ErrExpired, ca.cert.NotBefore, ca.cert.NotAfter, now)
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	id, err := spiffeid.FromSegments(ca.td, "agent", req.Name)
	if err != nil {
		return nil, fmt.Errorf("identity: issue: %v", err)
	}
	ext, err := marshalCredentialExtension(groups, roles)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial(r)
	if err != nil {
		return nil, fmt.Errorf("identity: issue: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{ca.td.Name()}, CommonName: req.Name},
		NotBefore:             now.Add(-certBackdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{id.URL()},
		IPAddresses:           []net.IP{addr.AsSlice()},
		ExtraExtensions:       []pkix.Extension{ext},
	}
	return tmpl, nil
}

// WriteCertificate writes the certificate der to path as PEM CERTIFICATE
// with mode 0644. Unless overwrite is set it refuses to replace an
// existing file (ErrFileExists). The file appears whole or not at all.
func WriteCertificate(path string, der []byte, overwrite bool) error {
	if _, err := x509.ParseCertificate(der); err != nil {
		return fmt.Errorf("identity: write certificate: %w: %v", ErrBadCredential, err)
	}
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: certPEMType, Bytes: der}), 0o644, overwrite)
}

// LoadCertificate reads a certificate file holding exactly one PEM
// CERTIFICATE block and returns its DER. Verify it with Bundle.Verify.
func LoadCertificate(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity: read certificate: %w", err)
	}
	der, err := parseCertificatePEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if _, err := x509.ParseCertificate(der); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrBadCredential, err)
	}
	return der, nil
}

// parseCertificatePEM returns the DER of the one PEM CERTIFICATE in data.
func parseCertificatePEM(data []byte) ([]byte, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block found (want PEM CERTIFICATE; DER is not accepted)", ErrBadCredential)
	}
	if block.Type != certPEMType {
		return nil, fmt.Errorf("%w: PEM block is %q, want %q", ErrBadCredential, block.Type, certPEMType)
	}
	if next, _ := pem.Decode(rest); next != nil {
		return nil, fmt.Errorf("%w: more than one PEM block, want one certificate", ErrBadCredential)
	}
	return block.Bytes, nil
}

// writeFile writes data to path with mode perm, whole or not at all.
// Unless overwrite is set it refuses to replace an existing file
// (ErrFileExists), even one that appears while it writes.
func writeFile(path string, data []byte, perm fs.FileMode, overwrite bool) error {
	if !overwrite {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%w: %s", ErrFileExists, path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("identity: write %s: %w", path, err)
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".agent6-*")
	if err != nil {
		return fmt.Errorf("identity: write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	fail := func(err error) error {
		tmp.Close()
		return fmt.Errorf("identity: write %s: %w", path, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("identity: write %s: %w", path, err)
	}
	if !overwrite {
		// Link fails if path appeared meanwhile; rename would clobber it.
		if err := os.Link(tmp.Name(), path); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%w: %s", ErrFileExists, path)
			}
			return fmt.Errorf("identity: write %s: %w", path, err)
		}
		return nil
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("identity: write %s: %w", path, err)
	}
	return nil
}
