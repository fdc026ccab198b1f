package identity

import (
	"bytes"
	"crypto/sha3"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// goldenVectors freeze the derivations. Changing any of these changes every
// Agent6 address in the world: do not "fix" them.
var goldenVectors = []struct {
	seed    string // Ed25519 seed, hex
	edPub   string // Ed25519 public key, base64
	wgPub   string // X25519 public key, base64
	wgPriv  string // X25519 private key, base64
	address string
}{
	{
		// libsodium test/default/ed25519_convert: curve25519 pk f1814f0e...,
		// sk 80520303... (an independent implementation's vector).
		seed:    "421151a459faeade3d247115f94aedae42318124095afabe4d1451a559faedee",
		edPub:   "tQdqhHSoMtruTdW0BAmDtmI7XzRKylfU1u5Lrz8lnm4=",
		wgPub:   "8YFPDo/xBD2KRNJbq/887crmwiw+2qSPhXrnDeK6rlA=",
		wgPriv:  "gFIDA3bUcRK+f3PtegGSk90SrZELZURVeYtGZ9c94WY=",
		address: "2001:21:52e9:6b35:89d4:edb0:307c:6cbc",
	},
	{
		seed:    "0000000000000000000000000000000000000000000000000000000000000000",
		edPub:   "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=",
		wgPub:   "W/Vcc7guviK+gPNDBmevVw+uJVamQV5rMNQGUwCqlH0=",
		wgPriv:  "UEatwduoOIZ7K7v90MNCPli1eXC1JnqQ9XlgkkqH8VY=",
		address: "2001:21:7c5b:3a66:a787:3cef:4e2e:6589",
	},
	{
		// RFC 8032 §7.1 TEST 1 key.
		seed:    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
		edPub:   "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
		wgPub:   "2F4H7CKwrYgVN8L0TWYtGhQ8+DDFespDBdhcepD2ti4=",
		wgPriv:  "MHyDhk8oM8tCei7xwAoBPP3/J2jZgMCjpSDwBpBN6U8=",
		address: "2001:21:d2a8:b7ba:6e04:2de5:9af5:512a",
	},
}

func TestGoldenVectors(t *testing.T) {
	for _, v := range goldenVectors {
		k, err := PrivateKeyFromSeed(mustHex(t, v.seed))
		if err != nil {
			t.Fatal(err)
		}
		if got := k.Public().String(); got != v.edPub {
			t.Errorf("seed %s: Ed25519 public = %s, want %s", v.seed, got, v.edPub)
		}
		wgPub, err := k.Public().WireGuard()
		if err != nil {
			t.Fatal(err)
		}
		if got := wgPub.String(); got != v.wgPub {
			t.Errorf("seed %s: WireGuard public = %s, want %s", v.seed, got, v.wgPub)
		}
		if got := k.WireGuard().Base64(); got != v.wgPriv {
			t.Errorf("seed %s: WireGuard private = %s, want %s", v.seed, got, v.wgPriv)
		}
		// The Montgomery form of the Ed25519 key and X25519(priv, base) agree.
		if got := k.WireGuard().Public(); !got.Equal(wgPub) {
			t.Errorf("seed %s: X25519(priv) = %s, Montgomery(edPub) = %s", v.seed, got, wgPub)
		}
		want := netip.MustParseAddr(v.address)
		if got := wgPub.Addr(); got != want {
			t.Errorf("seed %s: address = %s, want %s", v.seed, got, want)
		}
		if a, err := k.Public().Addr(); err != nil || a != want {
			t.Errorf("seed %s: PublicKey.Addr = %s, %v; want %s", v.seed, a, err, want)
		}
	}
}

// Stock WireGuard keys have addresses too; these pin the hash input (the
// 32 raw key bytes) independently of the Ed25519 path.
func TestAddrOfStockWireGuardKeys(t *testing.T) {
	for key, want := range map[string]string{
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE=": "2001:21:6bd4:6089:9284:5:da16:179d",
		"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=": "2001:21:da1d:f419:3f3d:833e:8266:839c",
	} {
		p, err := ParseWGPublicKey(key)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.Addr().String(); got != want {
			t.Errorf("Addr(%s) = %s, want %s", key, got, want)
		}
		if !p.Owns(netip.MustParseAddr(want)) || !IsOverlay(p.Addr()) || !Prefix.Contains(p.Addr()) {
			t.Errorf("%s: Owns/IsOverlay/Prefix disagree for %s", key, want)
		}
	}
}

// TestCSHAKEPrimitive pins the primitive's semantics (empty N, non-empty S)
// with NIST SP 800-185 cSHAKE128 sample #1.
func TestCSHAKEPrimitive(t *testing.T) {
	h := sha3.NewCSHAKE128(nil, []byte("Email Signature"))
	h.Write([]byte{0, 1, 2, 3})
	out := make([]byte, 32)
	h.Read(out)
	want := "c1c36925b6409a04f1b504fcbca9d82b4017277cb5ed2b2065fc1d3814d5aaf5"
	if got := hex.EncodeToString(out); got != want {
		t.Fatalf("cSHAKE128 sample #1 = %s, want %s", got, want)
	}
}

func TestIsOverlay(t *testing.T) {
	for s, want := range map[string]bool{
		"2001:21::1":             true,
		"2001:20::1":             false, // in the prefix, other suite
		"2001:db8::1":            false,
		"::ffff:32.1.0.33":       false,
		"fe80::1":                false,
		"2001:21:ffff:ffff::abc": true,
	} {
		if got := IsOverlay(netip.MustParseAddr(s)); got != want {
			t.Errorf("IsOverlay(%s) = %v, want %v", s, got, want)
		}
	}
}

func TestPEMRoundTrip(t *testing.T) {
	k, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "agent.key")
	if err := WritePrivateKey(path, k, false); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v, want 0600", fi.Mode().Perm())
	}
	got, err := LoadPrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(k) {
		t.Fatal("loaded key differs from saved key")
	}
	if err := WritePrivateKey(path, k, false); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("second write without overwrite: err = %v, want ErrKeyExists", err)
	}
	k2, _ := GeneratePrivateKey()
	if err := WritePrivateKey(path, k2, true); err != nil {
		t.Fatal(err)
	}
	if got, _ := LoadPrivateKey(path); !got.Equal(k2) {
		t.Fatal("overwrite did not replace the key")
	}
	if strings.Contains(k.String(), k.WireGuard().Base64()) {
		t.Fatal("String reveals the key")
	}
}

func TestLoadOpenSSLKey(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "ossl.key")
	if out, err := exec.Command(openssl, "genpkey", "-algorithm", "ed25519", "-out", path).CombinedOutput(); err != nil {
		t.Fatalf("openssl genpkey: %v\n%s", err, out)
	}
	k, err := LoadPrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	// openssl derives the same public key.
	out, err := exec.Command(openssl, "pkey", "-in", path, "-pubout", "-outform", "DER").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(out, k.Public().Bytes()) {
		t.Fatalf("openssl public key %x does not end with ours %x", out, k.Public().Bytes())
	}
	// And openssl reads what we write.
	ours := filepath.Join(dir, "ours.key")
	if err := WritePrivateKey(ours, k, false); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(openssl, "pkey", "-in", ours, "-noout").CombinedOutput(); err != nil {
		t.Fatalf("openssl pkey cannot read our key: %v\n%s", err, out)
	}
}

// TestWGToolsAgree checks our X25519 derivation against `wg pubkey`.
func TestWGToolsAgree(t *testing.T) {
	wg, err := exec.LookPath("wg")
	if err != nil {
		t.Skip("wireguard-tools (wg) not installed")
	}
	k, _ := GeneratePrivateKey()
	cmd := exec.Command(wg, "pubkey")
	cmd.Stdin = strings.NewReader(k.WireGuard().Base64() + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := k.Public().WireGuard()
	if got := strings.TrimSpace(string(out)); got != want.String() {
		t.Fatalf("wg pubkey = %s, we derive %s", got, want)
	}
}

func TestParseErrors(t *testing.T) {
	for _, s := range []string{"", "abc", "!!!!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"} {
		if _, err := ParseWGPublicKey(s); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParseWGPublicKey(%q) err = %v, want ErrInvalidKey", s, err)
		}
	}
	for _, data := range []string{"", "not pem", "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"} {
		if _, err := ParsePrivateKeyPEM([]byte(data)); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParsePrivateKeyPEM(%q) err = %v, want ErrInvalidKey", data, err)
		}
	}
}

func TestTextRoundTrip(t *testing.T) {
	k, _ := GeneratePrivateKey()
	w, _ := k.Public().WireGuard()
	b, _ := w.MarshalText()
	var w2 WGPublicKey
	if err := w2.UnmarshalText(b); err != nil || !w2.Equal(w) {
		t.Fatalf("WGPublicKey text round trip: %v", err)
	}
	b, _ = k.Public().MarshalText()
	var p PublicKey
	if err := p.UnmarshalText(b); err != nil || !p.Equal(k.Public()) {
		t.Fatalf("PublicKey text round trip: %v", err)
	}
}

func FuzzParsePrivateKeyPEM(f *testing.F) {
	k, _ := PrivateKeyFromSeed(make([]byte, 32))
	f.Add(k.MarshalPEM())
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParsePrivateKeyPEM(data)
		if err != nil {
			return
		}
		k2, err := ParsePrivateKeyPEM(k.MarshalPEM())
		if err != nil || !k2.Equal(k) {
			t.Fatalf("re-parse of a parsed key failed: %v", err)
		}
	})
}

func FuzzParseWGPublicKey(f *testing.F) {
	f.Add("HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseWGPublicKey(s)
		if err != nil {
			return
		}
		if p.String() != s {
			t.Fatalf("round trip %q -> %q", s, p.String())
		}
	})
}

func TestSignedRecord(t *testing.T) {
	k, _ := GeneratePrivateKey()
	r, err := SignRecord(k, RecordAgent, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	b := r.Marshal()
	got, err := ParseSignedRecord(b)
	if err != nil || got.Type != RecordAgent || string(got.Payload) != "hello" || !got.Signer.Equal(k.Public()) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	// Any flipped bit fails: type, signer, payload, signature, length.
	for i := range b {
		bad := append([]byte(nil), b...)
		bad[i] ^= 0x04
		if _, err := ParseSignedRecord(bad); !errors.Is(err, ErrBadRecord) {
			t.Fatalf("flipping byte %d: err = %v, want ErrBadRecord", i, err)
		}
	}
	if _, err := ParseSignedRecord(b[:len(b)-1]); !errors.Is(err, ErrBadRecord) {
		t.Fatal("truncated record accepted")
	}
}

func FuzzParseSignedRecord(f *testing.F) {
	k, _ := PrivateKeyFromSeed(make([]byte, 32))
	r, _ := SignRecord(k, RecordRevocation, []byte("x"))
	f.Add(r.Marshal())
	f.Add([]byte{1, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseSignedRecord(b)
		if err != nil {
			return
		}
		if string(r.Marshal()) != string(b) {
			t.Fatal("re-encoding differs")
		}
	})
}
