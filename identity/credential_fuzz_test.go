package identity

import (
	"bytes"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
)

// fuzzFixture is a deterministic federation of two CAs, so a crasher found
// once reproduces on every run.
type fuzzFixture struct {
	ca, other *CA
	bundle    *Bundle
	agent     PrivateKey
	cert      []byte // issued by ca to agent
	rev       SignedRecord
}

func newFuzzFixture(t testing.TB) fuzzFixture {
	t.Helper()
	r := rand.NewChaCha8([32]byte{'a', 'g', 'e', 'n', 't', '6'})
	key := func(b byte) PrivateKey {
		k, err := PrivateKeyFromSeed(bytes.Repeat([]byte{b}, 32))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	var fx fuzzFixture
	var err error
	if fx.ca, err = newCA("example.org", 0, testNow, key(1), r); err != nil {
		t.Fatal(err)
	}
	if fx.other, err = newCA("other.org", 0, testNow, key(2), r); err != nil {
		t.Fatal(err)
	}
	fx.bundle = testBundle(t, fx.ca, fx.other)
	fx.agent = key(3)
	req := IssueRequest{Key: fx.agent.Public(), Name: "alice", Groups: []string{"eng"}, Roles: []string{RoleRelay, RolePolicy}}
	if fx.cert, err = fx.ca.issue(req, testNow, r); err != nil {
		t.Fatal(err)
	}
	if fx.rev, err = fx.ca.Revoke(fx.cert, testNow); err != nil {
		t.Fatal(err)
	}
	return fx
}

// wrapsOneOf reports whether err wraps exactly one of sentinels.
func wrapsOneOf(err error, sentinels ...error) bool {
	n := 0
	for _, s := range sentinels {
		if errors.Is(err, s) {
			n++
		}
	}
	return n == 1
}

func FuzzVerify(f *testing.F) {
	fx := newFuzzFixture(f)
	f.Add(fx.cert)
	f.Add(fx.ca.cert.Raw)
	f.Add(fx.other.cert.Raw)
	f.Add([]byte{})
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x01})
	// A credential whose extension is version 2.
	tmpl, err := fx.ca.template(IssueRequest{Key: fx.agent.Public(), Name: "bob"}, testNow, rand.NewChaCha8([32]byte{}))
	if err != nil {
		f.Fatal(err)
	}
	v2, _ := asn1.Marshal(credentialExtension{Version: 2})
	tmpl.ExtraExtensions[0].Value = v2
	f.Add(signTemplate(f, fx.ca, tmpl, edPub(fx.agent)))
	f.Fuzz(func(t *testing.T, der []byte) {
		c, err := fx.bundle.Verify(der, testNow)
		if err != nil {
			if !wrapsOneOf(err, ErrBadCredential, ErrUntrusted, ErrExpired) {
				t.Fatalf("error %v wraps not exactly one refusal reason", err)
			}
			return
		}
		if addr, _ := c.AgentKey.Addr(); addr != c.Addr {
			t.Fatalf("address %v is not the key's %v", c.Addr, addr)
		}
		if !slices.Contains(fx.bundle.TrustDomains(), c.TrustDomain) || c.ID != "spiffe://"+c.TrustDomain+"/agent/"+c.Name {
			t.Fatalf("credential %q of trust domain %q", c.ID, c.TrustDomain)
		}
		for _, r := range c.Roles {
			if !knownRole(r) {
				t.Fatalf("unknown role %q", r)
			}
		}
		if !bytes.Equal(c.Raw, der) {
			t.Fatal("Raw is not the input")
		}
	})
}

func FuzzParseBundle(f *testing.F) {
	fx := newFuzzFixture(f)
	f.Add(fx.bundle.MarshalPEM())
	f.Add(fx.ca.CertificatePEM())
	f.Add(append(fx.ca.CertificatePEM(), fx.ca.CertificatePEM()...))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: fx.cert}))
	f.Add(fx.agent.MarshalPEM())
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBundle(data)
		if err != nil {
			if !errors.Is(err, ErrBadCredential) {
				t.Fatalf("error %v does not wrap ErrBadCredential", err)
			}
			return
		}
		tds := b.TrustDomains()
		if len(tds) == 0 {
			t.Fatal("a bundle with no trust domain")
		}
		again, err := ParseBundle(b.MarshalPEM())
		if err != nil || !slices.Equal(again.TrustDomains(), tds) {
			t.Fatalf("re-parse: %v", err)
		}
		for _, td := range tds {
			for _, c := range b.Certificates(td) {
				if !c.IsCA {
					t.Fatalf("%s: a certificate that is not a CA", td)
				}
			}
		}
		b.Verify(fx.cert, testNow)
		b.VerifyRevocation(fx.rev)
	})
}

func FuzzParseRevocation(f *testing.F) {
	fx := newFuzzFixture(f)
	f.Add(MarshalRevocationPEM(fx.rev))
	f.Add(fx.rev.Payload)
	f.Add(fx.rev.Marshal())
	f.Add([]byte(`{"v":2}`))
	f.Add([]byte(`{"v":1,"td":"example.org","id":"spiffe://example.org/agent/a","serial":"1","sha256":"` +
		string(bytes.Repeat([]byte("ab"), 32)) + `","not_after":1,"revoked_at":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		// The file form.
		if rec, err := ParseRevocationPEM(data); err == nil {
			if r, err := fx.bundle.VerifyRevocation(rec); err == nil && r.TrustDomain != "example.org" && r.TrustDomain != "other.org" {
				t.Fatalf("revocation of trust domain %q", r.TrustDomain)
			}
		} else if !errors.Is(err, ErrBadRecord) {
			t.Fatalf("error %v does not wrap ErrBadRecord", err)
		}
		// The payload, signed by a CA of the bundle.
		rec, err := SignRecord(fx.ca.key, RecordRevocation, data)
		if err != nil {
			return
		}
		r, err := fx.bundle.VerifyRevocation(rec)
		if err != nil {
			if !wrapsOneOf(err, ErrBadRecord, ErrUntrusted) {
				t.Fatalf("error %v wraps not exactly one refusal reason", err)
			}
			return
		}
		if !bytes.Equal(r.marshal(), data) {
			t.Fatalf("accepted non-canonical payload %q", data)
		}
		if r.TrustDomain != "example.org" {
			t.Fatalf("CA of example.org accepted for %q", r.TrustDomain)
		}
		if r.Matches(&Credential{TrustDomain: r.TrustDomain, Raw: fx.cert}) != (r.CertSHA256 == sha256.Sum256(fx.cert)) {
			t.Fatal("Matches disagrees with the hash")
		}
	})
}
