package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testNow is the fixed "now" of these tests.
var testNow = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

func newTestCA(t testing.TB, td string) *CA {
	t.Helper()
	ca, err := NewCA(td, 0, testNow)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func newTestKey(t testing.TB) PrivateKey {
	t.Helper()
	k, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testBundle(t testing.TB, cas ...*CA) *Bundle {
	t.Helper()
	var certs []*x509.Certificate
	for _, ca := range cas {
		certs = append(certs, ca.Certificate())
	}
	b, err := NewBundle(certs...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func issue(t testing.TB, ca *CA, k PrivateKey, name string) []byte {
	t.Helper()
	der, err := ca.Issue(IssueRequest{Key: k.Public(), Name: name}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// signTemplate signs a credential template (from ca.template, then
// altered) for pub with ca's key, so tests can build what Issue refuses to.
func signTemplate(t testing.TB, ca *CA, tmpl *x509.Certificate, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key.ed25519())
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func testTemplate(t testing.TB, ca *CA, k PrivateKey) *x509.Certificate {
	t.Helper()
	tmpl, err := ca.template(IssueRequest{Key: k.Public(), Name: "alice", Groups: []string{"eng"}, Roles: []string{RoleRelay}}, testNow, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return tmpl
}

func TestIssueVerifyRoundTrip(t *testing.T) {
	ca := newTestCA(t, "example.org")
	k := newTestKey(t)
	der, err := ca.Issue(IssueRequest{
		Key:    k.Public(),
		Name:   "alice",
		Groups: []string{"research", "eng", "research"},
		Roles:  []string{RoleWaypoint, RoleAuditor, RoleWaypoint},
		TTL:    2 * time.Hour,
	}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	c, err := testBundle(t, ca).Verify(der, testNow)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := k.Public().Addr()
	switch {
	case c.ID != "spiffe://example.org/agent/alice", c.TrustDomain != "example.org", c.Name != "alice":
		t.Errorf("identity: %q %q %q", c.ID, c.TrustDomain, c.Name)
	case !slices.Equal(c.Groups, []string{"eng", "research"}):
		t.Errorf("groups %q", c.Groups)
	case !slices.Equal(c.Roles, []string{RoleAuditor, RoleWaypoint}):
		t.Errorf("roles %q", c.Roles)
	case !c.AgentKey.Equal(k.Public()) || c.Addr != addr:
		t.Errorf("key %v addr %v", c.AgentKey, c.Addr)
	case !c.NotAfter.Equal(testNow.Add(2*time.Hour)) || !c.NotBefore.Equal(testNow.Add(-certBackdate)):
		t.Errorf("validity %v .. %v", c.NotBefore, c.NotAfter)
	case c.Serial != c.Cert.SerialNumber.Text(16) || len(c.Serial) != 32:
		t.Errorf("serial %q", c.Serial)
	case !bytes.Equal(c.Raw, der):
		t.Error("Raw is not the DER")
	}
	if !c.HasRole(RoleAuditor) || c.HasRole(RoleRelay) || !c.HasGroup("eng") || c.HasGroup("ops") {
		t.Error("HasRole/HasGroup")
	}
	// The credential does not alias the caller's buffer.
	der[len(der)-1] ^= 1
	if c.Raw[len(c.Raw)-1] == der[len(der)-1] {
		t.Error("Credential.Raw aliases the input")
	}
}

func TestIssueTTL(t *testing.T) {
	ca, err := NewCA("example.org", 10*time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	b := testBundle(t, ca)
	k := newTestKey(t)
	for _, tc := range []struct {
		ttl  time.Duration
		want time.Time
	}{
		{0, ca.Certificate().NotAfter}, // the default, 24h, cut to the CA's 10h
		{time.Hour, testNow.Add(time.Hour)},
		{100 * time.Hour, ca.Certificate().NotAfter},
	} {
		der, err := ca.Issue(IssueRequest{Key: k.Public(), Name: "a", TTL: tc.ttl}, testNow)
		if err != nil {
			t.Fatal(err)
		}
		c, err := b.Verify(der, testNow)
		if err != nil {
			t.Fatal(err)
		}
		if !c.NotAfter.Equal(tc.want) {
			t.Errorf("TTL %v: NotAfter %v, want %v", tc.ttl, c.NotAfter, tc.want)
		}
	}
	// The default, with a CA that outlives it.
	ca2 := newTestCA(t, "example.org")
	c, err := testBundle(t, ca2).Verify(issue(t, ca2, k, "a"), testNow)
	if err != nil || !c.NotAfter.Equal(testNow.Add(DefaultCredentialTTL)) {
		t.Errorf("default TTL: %v, %v", c, err)
	}
	// An expired CA issues nothing.
	if _, err := ca.Issue(IssueRequest{Key: k.Public(), Name: "a"}, testNow.Add(11*time.Hour)); !errors.Is(err, ErrExpired) {
		t.Errorf("issue by an expired CA: %v", err)
	}
}

func TestIssueRefusals(t *testing.T) {
	ca := newTestCA(t, "example.org")
	k := newTestKey(t)
	long := strings.Repeat("a", MaxNameLen+1)
	many := make([]string, MaxLabels+1)
	for i := range many {
		many[i] = "g" + strconv.Itoa(i)
	}
	for name, req := range map[string]IssueRequest{
		"no key":         {Name: "a"},
		"CA key":         {Key: ca.PublicKey(), Name: "a"},
		"empty name":     {Key: k.Public()},
		"slash in name":  {Key: k.Public(), Name: "a/b"},
		"dot-dot name":   {Key: k.Public(), Name: ".."},
		"space in name":  {Key: k.Public(), Name: "a b"},
		"long name":      {Key: k.Public(), Name: long},
		"unknown role":   {Key: k.Public(), Name: "a", Roles: []string{"admin"}},
		"bad group":      {Key: k.Public(), Name: "a", Groups: []string{"a/b"}},
		"empty group":    {Key: k.Public(), Name: "a", Groups: []string{""}},
		"too many":       {Key: k.Public(), Name: "a", Groups: many},
		"negative TTL":   {Key: k.Public(), Name: "a", TTL: -time.Second},
		"non-ASCII name": {Key: k.Public(), Name: "ålice"},
	} {
		if der, err := ca.Issue(req, testNow); err == nil {
			t.Errorf("%s: issued %d bytes", name, len(der))
		} else if !strings.HasPrefix(err.Error(), "identity: ") {
			t.Errorf("%s: error %q lacks the package prefix", name, err)
		}
	}
}

func TestNewCARefusals(t *testing.T) {
	for _, td := range []string{"", "Example.org", "spiffe://example.org", "exa mple", "a/b", strings.Repeat("a", 256)} {
		if _, err := NewCA(td, 0, testNow); err == nil {
			t.Errorf("NewCA(%q) succeeded", td)
		}
	}
	if _, err := NewCA("example.org", -time.Hour, testNow); err == nil {
		t.Error("NewCA with negative TTL succeeded")
	}
}

func TestCACertificate(t *testing.T) {
	ca := newTestCA(t, "example.org")
	c := ca.Certificate()
	if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero ||
		c.KeyUsage != x509.KeyUsageCertSign || len(c.SubjectKeyId) == 0 {
		t.Errorf("CA certificate: IsCA %v pathlen %d usage %v SKI %x", c.IsCA, c.MaxPathLen, c.KeyUsage, c.SubjectKeyId)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://example.org" || ca.TrustDomain() != "example.org" {
		t.Errorf("CA URIs %v", c.URIs)
	}
	if !c.NotAfter.Equal(testNow.Add(DefaultCATTL)) {
		t.Errorf("CA NotAfter %v", c.NotAfter)
	}
	b, err := ParseBundle(ca.CertificatePEM())
	if err != nil || !slices.Equal(b.TrustDomains(), []string{"example.org"}) {
		t.Fatalf("bundle of one: %v %v", b, err)
	}
	if td, k, err := checkCA(c); err != nil || td.Name() != "example.org" || !k.Equal(ca.PublicKey()) {
		t.Errorf("checkCA: %v %v %v", td, k, err)
	}
}

func TestCAFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca := newTestCA(t, "example.org")
	if err := ca.WriteFiles(dir, false); err != nil {
		t.Fatal(err)
	}
	for file, mode := range map[string]os.FileMode{CACertFile: 0o644, CAKeyFile: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", file, fi.Mode().Perm(), mode)
		}
	}
	got, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.TrustDomain() != "example.org" || !got.Certificate().Equal(ca.Certificate()) || !got.key.Equal(ca.key) {
		t.Error("LoadCA does not give back the CA")
	}
	// The loaded CA issues credentials the original's bundle accepts.
	if _, err := testBundle(t, ca).Verify(issue(t, got, newTestKey(t), "a"), testNow); err != nil {
		t.Error(err)
	}

	// No overwrite unless asked, whichever file exists.
	other := newTestCA(t, "example.org")
	if err := other.WriteFiles(dir, false); !errors.Is(err, ErrKeyExists) {
		t.Errorf("overwrite refused with %v", err)
	}
	os.Remove(filepath.Join(dir, CAKeyFile))
	if err := other.WriteFiles(dir, false); !errors.Is(err, ErrFileExists) {
		t.Errorf("overwrite refused with %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, CAKeyFile)); err == nil {
		t.Error("a refused WriteFiles wrote the key")
	}
	if err := other.WriteFiles(dir, true); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadCA(dir); err != nil || !got.Certificate().Equal(other.Certificate()) {
		t.Errorf("after overwrite: %v", err)
	}

	// A key that is not the certificate's key.
	if err := WritePrivateKey(filepath.Join(dir, CAKeyFile), newTestKey(t), true); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("mismatched key: %v", err)
	}
	// A leaf is not a CA certificate.
	if err := WriteCertificate(filepath.Join(dir, CACertFile), issue(t, other, newTestKey(t), "a"), true); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); !errors.Is(err, ErrBadCredential) {
		t.Errorf("leaf as CA: %v", err)
	}
	if _, err := LoadCA(filepath.Join(dir, "missing")); err == nil {
		t.Error("LoadCA of a missing directory")
	}
}

func TestCertificateFiles(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "example.org")
	der := issue(t, ca, newTestKey(t), "alice")
	path := filepath.Join(dir, "agent.crt")
	if err := WriteCertificate(path, der, false); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", fi.Mode().Perm())
	}
	got, err := LoadCertificate(path)
	if err != nil || !bytes.Equal(got, der) {
		t.Fatalf("round trip: %v", err)
	}
	if err := WriteCertificate(path, der, false); !errors.Is(err, ErrFileExists) {
		t.Errorf("overwrite: %v", err)
	}
	if err := WriteCertificate(path, der, true); err != nil {
		t.Errorf("overwrite with overwrite set: %v", err)
	}
	if err := WriteCertificate(filepath.Join(dir, "junk.crt"), []byte("junk"), false); !errors.Is(err, ErrBadCredential) {
		t.Errorf("junk: %v", err)
	}
	for name, data := range map[string][]byte{
		"der":     der,
		"key":     newTestKey(t).MarshalPEM(),
		"two":     append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), ca.CertificatePEM()...),
		"garbage": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("x")}),
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o644)
		if _, err := LoadCertificate(p); !errors.Is(err, ErrBadCredential) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestVerifyRefusals(t *testing.T) {
	ca := newTestCA(t, "example.org")
	other := newTestCA(t, "other.org")
	forger := newTestCA(t, "example.org") // same trust domain, not in the bundle
	b := testBundle(t, ca, other)
	k, k2 := newTestKey(t), newTestKey(t)
	addr2, _ := k2.Public().Addr()
	good := issue(t, ca, k, "alice")
	if _, err := b.Verify(good, testNow); err != nil {
		t.Fatal(err)
	}

	type alter func(*x509.Certificate)
	mk := func(by *CA, f alter) []byte {
		tmpl := testTemplate(t, by, k)
		if f != nil {
			f(tmpl)
		}
		return signTemplate(t, by, tmpl, edPub(k))
	}
	ext := func(v any, critical bool) alter {
		return func(c *x509.Certificate) {
			der, err := asn1.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			c.ExtraExtensions = []pkix.Extension{{Id: oidCredentialExtension, Critical: critical, Value: der}}
		}
	}
	uri := func(s ...string) alter {
		return func(c *x509.Certificate) {
			c.URIs = nil
			for _, u := range s {
				p, err := url.Parse(u)
				if err != nil {
					t.Fatal(err)
				}
				c.URIs = append(c.URIs, p)
			}
		}
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecCert := signTemplate(t, ca, testTemplate(t, ca, k), ecKey.Public())
	strs := func(ss ...string) []asn1.RawValue { return utf8Strings(ss) }
	// Issuer name and key identifier of ca, signature of forger.
	impostorParent := *forger.cert
	impostorParent.RawSubject, impostorParent.SubjectKeyId = ca.cert.RawSubject, ca.cert.SubjectKeyId
	impostor, err := x509.CreateCertificate(rand.Reader, testTemplate(t, forger, k), &impostorParent, edPub(k), forger.key.ed25519())
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		der  []byte
		now  time.Time
		want error
	}{
		{"garbage", []byte("not a certificate"), testNow, ErrBadCredential},
		{"empty", nil, testNow, ErrBadCredential},
		{"expired", good, testNow.Add(DefaultCredentialTTL + time.Second), ErrExpired},
		{"not yet valid", good, testNow.Add(-time.Hour), ErrExpired},
		{"CA expired", mk(ca, func(c *x509.Certificate) { c.NotAfter = ca.cert.NotAfter.Add(48 * time.Hour) }),
			ca.cert.NotAfter.Add(time.Hour), ErrExpired},
		{"forged: other CA, same trust domain", issue(t, forger, k, "alice"), testNow, ErrUntrusted},
		{"trust domain not in bundle", issue(t, newTestCA(t, "elsewhere.org"), k, "alice"), testNow, ErrUntrusted},
		{"CA of one domain claims another", mk(other, uri("spiffe://example.org/agent/alice")), testNow, ErrUntrusted},
		{"issuer name of the CA, signature of another", impostor, testNow, ErrUntrusted},
		{"not Ed25519", ecCert, testNow, ErrBadCredential},
		{"IP SAN of another key", mk(ca, func(c *x509.Certificate) { c.IPAddresses = []net.IP{addr2.AsSlice()} }), testNow, ErrBadCredential},
		{"no IP SAN", mk(ca, func(c *x509.Certificate) { c.IPAddresses = nil }), testNow, ErrBadCredential},
		{"two IP SANs", mk(ca, func(c *x509.Certificate) { c.IPAddresses = append(c.IPAddresses, addr2.AsSlice()) }), testNow, ErrBadCredential},
		{"IPv4 SAN", mk(ca, func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.IPv4(10, 0, 0, 1)} }), testNow, ErrBadCredential},
		{"DNS SAN", mk(ca, func(c *x509.Certificate) { c.DNSNames = []string{"alice.example.org"} }), testNow, ErrBadCredential},
		{"no URI SAN", mk(ca, uri()), testNow, ErrBadCredential},
		{"two URI SANs", mk(ca, uri("spiffe://example.org/agent/alice", "spiffe://example.org/agent/bob")), testNow, ErrBadCredential},
		{"not spiffe", mk(ca, uri("https://example.org/agent/alice")), testNow, ErrBadCredential},
		{"trust domain ID", mk(ca, uri("spiffe://example.org")), testNow, ErrBadCredential},
		{"not /agent/", mk(ca, uri("spiffe://example.org/workload/alice")), testNow, ErrBadCredential},
		{"deeper path", mk(ca, uri("spiffe://example.org/agent/alice/x")), testNow, ErrBadCredential},
		{"query", mk(ca, uri("spiffe://example.org/agent/alice?x=1")), testNow, ErrBadCredential},
		{"upper-case trust domain", mk(ca, uri("spiffe://EXAMPLE.org/agent/alice")), testNow, ErrBadCredential},
		{"no extension", mk(ca, func(c *x509.Certificate) { c.ExtraExtensions = nil }), testNow, ErrBadCredential},
		{"extension version 2", mk(ca, ext(credentialExtension{Version: 2, Groups: strs(), Roles: strs()}, false)), testNow, ErrBadCredential},
		{"extension version 0", mk(ca, ext(credentialExtension{Version: 0, Groups: strs(), Roles: strs()}, false)), testNow, ErrBadCredential},
		{"extension garbage", mk(ca, ext(asn1.RawValue{FullBytes: []byte{0x04, 0x01, 0x00}}, false)), testNow, ErrBadCredential},
		{"extension trailing field", mk(ca, ext(struct {
			Version       int
			Groups, Roles []asn1.RawValue
			More          int
		}{1, strs(), strs(), 7}, false)), testNow, ErrBadCredential},
		{"extension PrintableString", mk(ca, ext(struct {
			Version       int
			Groups, Roles []string
		}{1, []string{"eng"}, nil}, false)), testNow, ErrBadCredential},
		{"extension bad group", mk(ca, ext(credentialExtension{Version: 1, Groups: strs("a/b"), Roles: strs()}, false)), testNow, ErrBadCredential},
		{"extension critical", mk(ca, ext(credentialExtension{Version: 1, Groups: strs(), Roles: strs()}, true)), testNow, ErrBadCredential},
		{"CA certificate as leaf", ca.cert.Raw, testNow, ErrBadCredential},
		{"CA-signed CA as leaf", mk(ca, func(c *x509.Certificate) {
			c.IsCA, c.KeyUsage, c.ExtKeyUsage = true, x509.KeyUsageCertSign|x509.KeyUsageDigitalSignature, nil
		}), testNow, ErrBadCredential},
		{"cert-sign usage", mk(ca, func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }), testNow, ErrBadCredential},
		{"no digitalSignature", mk(ca, func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyAgreement }), testNow, ErrBadCredential},
		{"code-signing only", mk(ca, func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning} }), testNow, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := b.Verify(tc.der, tc.now)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got (%v, %v), want %v", c, err, tc.want)
			}
			t.Log(err)
			for _, other := range []error{ErrBadCredential, ErrUntrusted, ErrExpired} {
				if other != tc.want && errors.Is(err, other) {
					t.Errorf("%v also wraps %v", err, other)
				}
			}
		})
	}
}

func TestVerifyDropsUnknownRoles(t *testing.T) {
	ca := newTestCA(t, "example.org")
	k := newTestKey(t)
	tmpl := testTemplate(t, ca, k)
	v, _ := asn1.Marshal(credentialExtension{Version: 1, Groups: utf8Strings([]string{"eng"}), Roles: utf8Strings([]string{"dns", RoleRelay})})
	tmpl.ExtraExtensions = []pkix.Extension{{Id: oidCredentialExtension, Value: v}}
	c, err := testBundle(t, ca).Verify(signTemplate(t, ca, tmpl, edPub(k)), testNow)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Roles, []string{RoleRelay}) {
		t.Errorf("roles %q, want [relay]", c.Roles)
	}
}

func TestFederation(t *testing.T) {
	a, b := newTestCA(t, "a.example"), newTestCA(t, "b.example")
	bundle, err := ParseBundle(append(a.CertificatePEM(), b.CertificatePEM()...))
	if err != nil {
		t.Fatal(err)
	}
	if got := bundle.TrustDomains(); !slices.Equal(got, []string{"a.example", "b.example"}) {
		t.Errorf("TrustDomains %q", got)
	}
	ka, kb := newTestKey(t), newTestKey(t)
	ca, err := bundle.Verify(issue(t, a, ka, "x"), testNow)
	if err != nil || ca.ID != "spiffe://a.example/agent/x" {
		t.Fatalf("A: %v %v", ca, err)
	}
	cb, err := bundle.Verify(issue(t, b, kb, "x"), testNow)
	if err != nil || cb.ID != "spiffe://b.example/agent/x" {
		t.Fatalf("B: %v %v", cb, err)
	}
	// A bundle that trusts only B refuses A's credentials, and A's CA
	// cannot vouch for a name in B.
	onlyB := testBundle(t, b)
	if _, err := onlyB.Verify(issue(t, a, ka, "x"), testNow); !errors.Is(err, ErrUntrusted) {
		t.Errorf("A's credential under B's bundle: %v", err)
	}
	tmpl := testTemplate(t, a, ka)
	tmpl.URIs = []*url.URL{{Scheme: "spiffe", Host: "b.example", Path: "/agent/x"}}
	if _, err := bundle.Verify(signTemplate(t, a, tmpl, edPub(ka)), testNow); !errors.Is(err, ErrUntrusted) {
		t.Errorf("A signing for B: %v", err)
	}
	// Round trip of the federated bundle.
	again, err := ParseBundle(bundle.MarshalPEM())
	if err != nil || !slices.Equal(again.TrustDomains(), bundle.TrustDomains()) {
		t.Errorf("MarshalPEM round trip: %v", err)
	}
	if len(bundle.Certificates("a.example")) != 1 || bundle.Certificates("c.example") != nil {
		t.Error("Certificates")
	}
}

// TestIsCAKey: a bundle knows the keys of each domain's CAs, and only for
// that domain; a CA signs policy records with its own key.
func TestIsCAKey(t *testing.T) {
	a, b, rotated := newTestCA(t, "a.example"), newTestCA(t, "b.example"), newTestCA(t, "a.example")
	bundle := testBundle(t, a, b, rotated)
	for _, c := range []struct {
		td   string
		key  PublicKey
		want bool
	}{
		{"a.example", a.PublicKey(), true},
		{"a.example", rotated.PublicKey(), true},
		{"b.example", b.PublicKey(), true},
		{"b.example", a.PublicKey(), false},
		{"c.example", a.PublicKey(), false},
		{"a.example", newTestKey(t).Public(), false},
	} {
		if got := bundle.IsCAKey(c.td, c.key); got != c.want {
			t.Errorf("IsCAKey(%s, %s) = %v", c.td, c.key, got)
		}
	}
	rec, err := a.SignPolicy([]byte("payload"))
	if err != nil || rec.Type != RecordPolicy || !rec.Signer.Equal(a.PublicKey()) || rec.Verify() != nil {
		t.Errorf("SignPolicy: %+v %v", rec, err)
	}
}

func TestBundleRotation(t *testing.T) {
	old, cur := newTestCA(t, "example.org"), newTestCA(t, "example.org")
	// Duplicates count once.
	b, err := ParseBundle(bytes.Join([][]byte{old.CertificatePEM(), cur.CertificatePEM(), old.CertificatePEM()}, []byte("\n# comment\n")))
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Certificates("example.org")) != 2 || !slices.Equal(b.TrustDomains(), []string{"example.org"}) {
		t.Fatalf("bundle %q with %d CAs", b.TrustDomains(), len(b.Certificates("example.org")))
	}
	k := newTestKey(t)
	for _, ca := range []*CA{old, cur} {
		if _, err := b.Verify(issue(t, ca, k, "a"), testNow); err != nil {
			t.Error(err)
		}
	}
}

func TestParseBundleRefusals(t *testing.T) {
	ca := newTestCA(t, "example.org")
	leaf := issue(t, ca, newTestKey(t), "a")
	certPEM := func(der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}) }
	// CA certificates that are wrong in one way each.
	caCert := func(f func(*x509.Certificate), signer *CA) []byte {
		k := newTestKey(t)
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(7),
			Subject:               pkix.Name{CommonName: "test CA"},
			NotBefore:             testNow,
			NotAfter:              testNow.Add(time.Hour),
			KeyUsage:              x509.KeyUsageCertSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
			URIs:                  []*url.URL{{Scheme: "spiffe", Host: "example.org"}},
		}
		f(tmpl)
		parent, priv := tmpl, crypto.Signer(k.ed25519())
		if signer != nil {
			parent, priv = signer.cert, signer.key.ed25519()
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, edPub(k), priv)
		if err != nil {
			t.Fatal(err)
		}
		return certPEM(der)
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ec"}, NotBefore: testNow, NotAfter: testNow.Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
		URIs: []*url.URL{{Scheme: "spiffe", Host: "example.org"}},
	}
	ecDER, err := x509.CreateCertificate(rand.Reader, ecTmpl, ecTmpl, ecKey.Public(), ecKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseBundle(caCert(func(*x509.Certificate) {}, nil)); err != nil {
		t.Fatalf("the control case fails: %v", err)
	}
	for name, data := range map[string][]byte{
		"empty":         nil,
		"no PEM":        []byte("hello"),
		"private key":   newTestKey(t).MarshalPEM(),
		"key after CA":  append(ca.CertificatePEM(), newTestKey(t).MarshalPEM()...),
		"garbage cert":  certPEM([]byte("x")),
		"leaf":          certPEM(leaf),
		"ECDSA CA":      certPEM(ecDER),
		"not a CA":      caCert(func(c *x509.Certificate) { c.IsCA = false }, nil),
		"no cert sign":  caCert(func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageDigitalSignature }, nil),
		"no URI":        caCert(func(c *x509.Certificate) { c.URIs = nil }, nil),
		"URI with path": caCert(func(c *x509.Certificate) { c.URIs[0].Path = "/agent/x" }, nil),
		"not spiffe":    caCert(func(c *x509.Certificate) { c.URIs[0].Scheme = "https" }, nil),
		"two URIs":      caCert(func(c *x509.Certificate) { c.URIs = append(c.URIs, c.URIs[0]) }, nil),
		"DNS SAN":       caCert(func(c *x509.Certificate) { c.DNSNames = []string{"example.org"} }, nil),
		"intermediate":  caCert(func(c *x509.Certificate) {}, ca),
		"critical ext": caCert(func(c *x509.Certificate) {
			c.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3}, Critical: true, Value: []byte{5, 0}}}
		}, nil),
		"bad trust domain": caCert(func(c *x509.Certificate) { c.URIs[0].Host = "Example.org" }, nil),
	} {
		if b, err := ParseBundle(data); !errors.Is(err, ErrBadCredential) {
			t.Errorf("%s: got (%v, %v)", name, b, err)
		}
	}
	if _, err := NewBundle(); !errors.Is(err, ErrBadCredential) {
		t.Errorf("empty NewBundle: %v", err)
	}
	if _, err := NewBundle(nil); !errors.Is(err, ErrBadCredential) {
		t.Errorf("NewBundle(nil): %v", err)
	}
	path := filepath.Join(t.TempDir(), "bundle.pem")
	os.WriteFile(path, []byte("junk"), 0o644)
	if _, err := LoadBundle(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("LoadBundle error %v does not name the file", err)
	}
}

func TestRevocation(t *testing.T) {
	ca, other := newTestCA(t, "example.org"), newTestCA(t, "other.org")
	b := testBundle(t, ca, other)
	k := newTestKey(t)
	der, der2 := issue(t, ca, k, "alice"), issue(t, ca, k, "alice")
	cred, err := b.Verify(der, testNow)
	if err != nil {
		t.Fatal(err)
	}
	cred2, _ := b.Verify(der2, testNow)
	otherCred, _ := b.Verify(issue(t, other, k, "alice"), testNow)

	rec, err := ca.Revoke(der, testNow.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Type != RecordRevocation || !rec.Signer.Equal(ca.PublicKey()) {
		t.Fatalf("record %v signed by %v", rec.Type, rec.Signer)
	}
	r, err := b.VerifyRevocation(rec)
	if err != nil {
		t.Fatal(err)
	}
	if r.TrustDomain != "example.org" || r.ID != cred.ID || r.Serial != cred.Serial ||
		r.CertSHA256 != sha256.Sum256(der) || !r.NotAfter.Equal(cred.NotAfter) || !r.RevokedAt.Equal(testNow.Add(time.Minute)) {
		t.Errorf("revocation %+v", r)
	}
	if !r.Matches(cred) || r.Matches(cred2) || r.Matches(otherCred) || r.Matches(nil) {
		t.Error("Matches")
	}
	// Deterministic: same input, same payload.
	rec2, _ := ca.Revoke(der, testNow.Add(time.Minute))
	if !bytes.Equal(rec.Payload, rec2.Payload) {
		t.Error("payload not deterministic")
	}
	if !strings.HasPrefix(string(rec.Payload), `{"v":1,"td":"example.org",`) {
		t.Errorf("payload %s", rec.Payload)
	}

	// Through the wire and the file.
	wire, err := ParseSignedRecord(rec.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.VerifyRevocation(wire); err != nil {
		t.Error(err)
	}
	path := filepath.Join(t.TempDir(), "alice.revocation")
	if err := WriteRevocation(path, rec, false); err != nil {
		t.Fatal(err)
	}
	if err := WriteRevocation(path, rec, false); !errors.Is(err, ErrFileExists) {
		t.Errorf("overwrite: %v", err)
	}
	data, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(data), "-----BEGIN AGENT6 REVOCATION-----\n") {
		t.Errorf("file:\n%s", data)
	}
	loaded, err := LoadRevocation(path)
	if err != nil {
		t.Fatal(err)
	}
	if lr, err := b.VerifyRevocation(loaded); err != nil || !lr.Matches(cred) {
		t.Errorf("loaded revocation: %v", err)
	}

	// Refusals.
	if _, err := other.Revoke(der, testNow); !errors.Is(err, ErrUntrusted) {
		t.Errorf("revoke by another CA: %v", err)
	}
	if _, err := ca.Revoke(ca.cert.Raw, testNow); err == nil {
		t.Error("revoked the CA certificate")
	}
	if _, err := ca.Revoke([]byte("junk"), testNow); !errors.Is(err, ErrBadCredential) {
		t.Errorf("revoke junk: %v", err)
	}
	notCA := newTestKey(t)
	forged, _ := SignRecord(notCA, RecordRevocation, rec.Payload)
	if _, err := b.VerifyRevocation(forged); !errors.Is(err, ErrUntrusted) {
		t.Errorf("signed by a non-CA key: %v", err)
	}
	otherSigned, _ := SignRecord(other.key, RecordRevocation, rec.Payload)
	if _, err := b.VerifyRevocation(otherSigned); !errors.Is(err, ErrUntrusted) {
		t.Errorf("signed by another domain's CA: %v", err)
	}
	wrongType, _ := SignRecord(ca.key, RecordPolicy, rec.Payload)
	if _, err := b.VerifyRevocation(wrongType); !errors.Is(err, ErrBadRecord) {
		t.Errorf("wrong type: %v", err)
	}
	tampered := rec
	tampered.Payload = bytes.Replace(rec.Payload, []byte(`"v":1`), []byte(`"v":1 `), 1)
	if _, err := b.VerifyRevocation(tampered); !errors.Is(err, ErrBadRecord) {
		t.Errorf("tampered: %v", err)
	}
	if _, err := testBundle(t, other).VerifyRevocation(rec); !errors.Is(err, ErrUntrusted) {
		t.Errorf("trust domain not in bundle: %v", err)
	}
	// Payloads the CA signed but that are not canonical version 1.
	for _, p := range []string{
		strings.Replace(string(rec.Payload), `"v":1`, `"v":2`, 1),
		strings.Replace(string(rec.Payload), `"v":1,`, ``, 1),
		strings.Replace(string(rec.Payload), `"v":1`, `"V":1`, 1),
		strings.Replace(string(rec.Payload), `,`, `, `, 1),
		string(rec.Payload) + "\n",
		strings.Replace(string(rec.Payload), `}`, `,"x":1}`, 1),
		strings.Replace(string(rec.Payload), `example.org"`, `Example.org"`, 1),
		strings.Replace(string(rec.Payload), r.Serial, "0"+r.Serial, 1),
		strings.Replace(string(rec.Payload), `"sha256":"`, `"sha256":"00`, 1),
		`{}`, `null`, ``, `[]`,
	} {
		s, _ := SignRecord(ca.key, RecordRevocation, []byte(p))
		if _, err := b.VerifyRevocation(s); !errors.Is(err, ErrBadRecord) {
			t.Errorf("payload %s: %v", p, err)
		}
	}
	// Files that are not revocations.
	badSig := rec.Marshal()
	badSig[len(badSig)-1] ^= 1
	for name, data := range map[string][]byte{
		"empty":      nil,
		"cert":       ca.CertificatePEM(),
		"binary":     rec.Marshal(),
		"wrong type": MarshalRevocationPEM(wrongType),
		"bad sig":    pem.EncodeToMemory(&pem.Block{Type: RevocationPEMType, Bytes: badSig}),
	} {
		if _, err := ParseRevocationPEM(data); !errors.Is(err, ErrBadRecord) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestPublicKeyPEM(t *testing.T) {
	k := newTestKey(t)
	for name, data := range map[string][]byte{"public": k.Public().MarshalPEM(), "private": k.MarshalPEM()} {
		p, err := ParsePublicKeyPEM(data)
		if err != nil || !p.Equal(k.Public()) {
			t.Errorf("%s: %v", name, err)
		}
	}
	ca := newTestCA(t, "example.org")
	for name, data := range map[string][]byte{"none": nil, "cert": ca.CertificatePEM(), "junk": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}})} {
		if _, err := ParsePublicKeyPEM(data); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%s: %v", name, err)
		}
	}
	path := filepath.Join(t.TempDir(), "agent.pub")
	os.WriteFile(path, k.Public().MarshalPEM(), 0o644)
	if p, err := LoadPublicKey(path); err != nil || !p.Equal(k.Public()) {
		t.Errorf("LoadPublicKey: %v", err)
	}
}

// TestOpenSSL checks that stock X.509 tooling reads and verifies our
// certificates: the CA, an agent credential, a federated bundle.
func TestOpenSSL(t *testing.T) {
	openssl := lookOpenSSL(t)
	dir := t.TempDir()
	now := time.Now() // openssl verifies at its own time
	ca, err := NewCA("example.org", 0, now)
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := NewCA("other.org", 0, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteFiles(dir, false); err != nil {
		t.Fatal(err)
	}
	k := newTestKey(t)
	der, err := ca.Issue(IssueRequest{Key: k.Public(), Name: "alice", Groups: []string{"eng"}, Roles: []string{RoleRelay}}, now)
	if err != nil {
		t.Fatal(err)
	}
	crt := filepath.Join(dir, "agent.crt")
	if err := WriteCertificate(crt, der, false); err != nil {
		t.Fatal(err)
	}
	caCrt := filepath.Join(dir, CACertFile)
	out := runOpenSSL(t, openssl, "x509", "-in", caCrt, "-noout", "-text")
	for _, want := range []string{"CA:TRUE", "Certificate Sign", "URI:spiffe://example.org", "ED25519"} {
		if !strings.Contains(out, want) {
			t.Errorf("openssl x509 CA output lacks %q:\n%s", want, out)
		}
	}
	addr, _ := k.Public().Addr()
	out = runOpenSSL(t, openssl, "x509", "-in", crt, "-noout", "-text")
	for _, want := range []string{"CA:FALSE", "Digital Signature", "URI:spiffe://example.org/agent/alice", CredentialExtensionOID, "TLS Web Client Authentication"} {
		if !strings.Contains(out, want) {
			t.Errorf("openssl x509 output lacks %q:\n%s", want, out)
		}
	}
	if want := "IP Address:" + openSSLIPv6(addr); !strings.Contains(out, want) {
		t.Errorf("openssl x509 output lacks %q:\n%s", want, out)
	}
	runOpenSSL(t, openssl, "verify", "-CAfile", caCrt, crt)
	runOpenSSL(t, openssl, "verify", "-CAfile", caCrt, "-purpose", "sslclient", crt)
	runOpenSSL(t, openssl, "verify", "-CAfile", caCrt, "-purpose", "sslserver", crt)
	runOpenSSL(t, openssl, "pkey", "-in", filepath.Join(dir, CAKeyFile), "-noout")

	// A federated bundle verifies with openssl too, and a credential of a
	// CA outside it does not.
	bundle := filepath.Join(dir, "bundle.pem")
	os.WriteFile(bundle, append(ca2.CertificatePEM(), ca.CertificatePEM()...), 0o644)
	runOpenSSL(t, openssl, "verify", "-CAfile", bundle, crt)
	stranger, _ := NewCA("example.org", 0, now)
	sder, _ := stranger.Issue(IssueRequest{Key: k.Public(), Name: "alice"}, now)
	scrt := filepath.Join(dir, "stranger.crt")
	WriteCertificate(scrt, sder, false)
	if out, err := openSSLCommand(openssl, "verify", "-CAfile", bundle, scrt).CombinedOutput(); err == nil {
		t.Errorf("openssl verified a credential from outside the bundle:\n%s", out)
	}

	// And the other way: openssl's own reading of the public key is ours.
	pub := runOpenSSL(t, openssl, "x509", "-in", crt, "-noout", "-pubkey")
	if p, err := ParsePublicKeyPEM([]byte(pub)); err != nil || !p.Equal(k.Public()) {
		t.Errorf("openssl -pubkey: %v", err)
	}
}

// edPub returns k's public key as crypto/x509 wants it.
func edPub(k PrivateKey) crypto.PublicKey { return ed25519.PublicKey(k.Public().Bytes()) }

func lookOpenSSL(t *testing.T) string {
	t.Helper()
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	return openssl
}

func openSSLCommand(openssl string, args ...string) *exec.Cmd {
	cmd := exec.Command(openssl, args...)
	cmd.Env = append(os.Environ(), "OPENSSL_CONF=/dev/null")
	return cmd
}

func runOpenSSL(t *testing.T, openssl string, args ...string) string {
	t.Helper()
	out, err := openSSLCommand(openssl, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// openSSLIPv6 writes a as openssl prints an IPv6 SAN: eight upper-case
// hex groups, no compression.
func openSSLIPv6(a netip.Addr) string {
	b := a.As16()
	groups := make([]string, 8)
	for i := range groups {
		groups[i] = strings.ToUpper(strconv.FormatUint(uint64(b[2*i])<<8|uint64(b[2*i+1]), 16))
	}
	return strings.Join(groups, ":")
}

// BenchmarkBundleVerify is what admitting one agent costs in credential
// checks: each node verifies each other's credential once.
func BenchmarkBundleVerify(b *testing.B) {
	ca := newTestCA(b, "example.org")
	bundle := testBundle(b, ca)
	k, _ := GeneratePrivateKey()
	der := issue(b, ca, k, "alice")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bundle.Verify(der, testNow); err != nil {
			b.Fatal(err)
		}
	}
}
