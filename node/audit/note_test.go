package audit

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	flog "github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"
)

func TestOrigin(t *testing.T) {
	o, err := Origin("example.org", addrA)
	if err != nil || o != "example.org/agent6/audit/2001:21:4bc6:f39d:90d:70a2:9351:1c64" {
		t.Fatalf("Origin = %q, %v", o, err)
	}
	o, err = Origin("", addrA)
	if err != nil || !strings.HasPrefix(o, NoTrustDomain+"/agent6/audit/") {
		t.Fatalf("Origin without trust domain = %q, %v", o, err)
	}
	w, err := WitnessName("example.org", addrA)
	if err != nil || w != "example.org/agent6/witness/2001:21:4bc6:f39d:90d:70a2:9351:1c64" {
		t.Fatalf("WitnessName = %q, %v", w, err)
	}
	for _, td := range []string{"Example.org", "a b", "x+y"} {
		if _, err := Origin(td, addrA); !errors.Is(err, ErrConfig) {
			t.Errorf("Origin(%q) err %v", td, err)
		}
	}
	if _, err := Origin("example.org", netip.MustParseAddr("192.0.2.1")); !errors.Is(err, ErrConfig) {
		t.Errorf("Origin(IPv4) err %v", err)
	}
}

// TestSignerInterop checks the checkpoint signer against x/mod's own note
// verifier and Tessera's checkpoint parser: a standard client reads our
// checkpoints.
func TestSignerInterop(t *testing.T) {
	k := testKey(t)
	origin, _ := Origin("example.org", addrA)
	s, err := NewSigner(k, origin)
	if err != nil {
		t.Fatal(err)
	}
	vkey, err := VerifierKey(origin, k.Public())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(vkey, origin+"+") {
		t.Fatalf("vkey %q", vkey)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	if v.KeyHash() != s.KeyHash() {
		t.Fatalf("key hash %08x, verifier says %08x", s.KeyHash(), v.KeyHash())
	}
	cp := Checkpoint{Origin: origin, Size: 7, Root: [32]byte{1}}
	raw, err := note.Sign(&note.Note{Text: cp.Text()}, s)
	if err != nil {
		t.Fatal(err)
	}
	got, _, _, err := flog.ParseCheckpoint(raw, origin, v)
	if err != nil || got.Size != 7 {
		t.Fatalf("formats' ParseCheckpoint: %+v, %v", got, err)
	}
	mine, err := ParseCheckpoint(raw, origin, v)
	if err != nil || mine.Size != 7 || mine.Root != cp.Root {
		t.Fatalf("ParseCheckpoint: %+v, %v", mine, err)
	}
}

// TestCosignerInterop checks our cosignature/v1 signer against the
// reference verifier in transparency-dev/formats.
func TestCosignerInterop(t *testing.T) {
	k := testKey(t)
	name, _ := WitnessName("other.org", addrW)
	c, err := NewCosigner(k, name)
	if err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return time.Unix(1_800_000_000, 0) }
	vkey, err := CosignerKey(name, k.Public())
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewCosignatureVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	if v.KeyHash() != c.KeyHash() {
		t.Fatalf("key hash %08x, verifier says %08x", c.KeyHash(), v.KeyHash())
	}
	text := Checkpoint{Origin: "example.org/agent6/audit/" + addrA.String(), Size: 3, Root: [32]byte{9}}.Text()
	signed, err := note.Sign(&note.Note{Text: text}, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := note.Open(signed, note.VerifierList(v)); err != nil {
		t.Fatalf("reference verifier refuses our cosignature: %v", err)
	}
	// A cosignature over other text does not verify.
	forged := bytes.Replace(signed, []byte("\n3\n"), []byte("\n4\n"), 1)
	if _, err := note.Open(forged, note.VerifierList(v)); err == nil {
		t.Fatal("cosignature verified for other text")
	}
	// Ed25519 note keys and cosignature keys of one node differ.
	s, _ := NewSigner(k, name)
	if s.KeyHash() == c.KeyHash() {
		t.Fatal("note and cosignature key hashes collide")
	}
}

func TestParseCheckpointRefuses(t *testing.T) {
	k, other := testKey(t), testKey(t)
	origin, _ := Origin("example.org", addrA)
	s, _ := NewSigner(k, origin)
	so, _ := NewSigner(other, origin)
	v, _ := NewVerifier(origin, k.Public())
	text := Checkpoint{Origin: origin, Size: 5, Root: [32]byte{3}}.Text()
	good, _ := note.Sign(&note.Note{Text: text}, s)
	forged, _ := note.Sign(&note.Note{Text: text}, so)
	otherOrigin, _ := Origin("example.org", addrB)
	so2, _ := NewSigner(k, otherOrigin)
	wrongOrigin, _ := note.Sign(&note.Note{Text: Checkpoint{Origin: otherOrigin, Size: 5}.Text()}, so2)
	ext, _ := note.Sign(&note.Note{Text: text + "extension\n"}, s)
	badSize, _ := note.Sign(&note.Note{Text: origin + "\n05\n" + strings.Split(text, "\n")[2] + "\n"}, s)
	shortRoot, _ := note.Sign(&note.Note{Text: origin + "\n5\nAAAA\n"}, s)
	tampered := bytes.Replace(good, []byte("\n5\n"), []byte("\n6\n"), 1)
	if _, err := ParseCheckpoint(good, origin, v); err != nil {
		t.Fatal(err)
	}
	for name, raw := range map[string][]byte{
		"forged":       forged,
		"wrong origin": wrongOrigin,
		"extension":    ext,
		"size 05":      badSize,
		"short root":   shortRoot,
		"tampered":     tampered,
		"huge":         append(bytes.Repeat([]byte("x"), MaxCheckpointSize), good...),
		"empty":        nil,
		"text only":    []byte(text),
	} {
		if _, err := ParseCheckpoint(raw, origin, v); !errors.Is(err, ErrCheckpoint) {
			t.Errorf("%s: err %v, want ErrCheckpoint", name, err)
		}
	}
}

func FuzzParseCheckpoint(f *testing.F) {
	k := testKey(f)
	origin, _ := Origin("example.org", addrA)
	s, _ := NewSigner(k, origin)
	v, _ := NewVerifier(origin, k.Public())
	wname, _ := WitnessName("other.org", addrB)
	c, _ := NewCosigner(k, wname)
	wkey, _ := CosignerKey(wname, k.Public())
	wv, _ := NewCosignatureVerifier(wkey)
	text := Checkpoint{Origin: origin, Size: 5, Root: [32]byte{3}}.Text()
	good, _ := note.Sign(&note.Note{Text: text}, s)
	cosigned, _ := note.Sign(&note.Note{Text: text}, s, c)
	f.Add(good)
	f.Add(cosigned)
	f.Add([]byte(text + "\n— x AAAAAAAA\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		cp, err := ParseCheckpoint(raw, origin, v, wv)
		if err == nil {
			if cp.Origin != origin || !bytes.HasPrefix(raw, []byte(cp.Text())) {
				t.Fatalf("accepted checkpoint %+v does not match its text", cp)
			}
		}
		CheckpointOrigin(raw)
		sigLines(raw)
	})
}

func TestCommitment(t *testing.T) {
	c := NewCommitter([32]byte{1, 2, 3})
	r := sampleRecords()[1]
	value := []byte("GET /search?q=lisbon")
	if err := c.Commit(&r, "request", value); err != nil {
		t.Fatal(err)
	}
	if err := c.Commit(&r, "request", value); err == nil {
		t.Fatal("second commitment of one name accepted")
	}
	if err := c.Commit(&r, "Bad Name", value); err == nil {
		t.Fatal("bad commitment name accepted")
	}
	cm, ok := r.Commitment("request")
	if !ok {
		t.Fatal("no commitment")
	}
	salt, err := c.Salt(&r, "request")
	if err != nil {
		t.Fatal(err)
	}
	if err := cm.Open(salt, value); err != nil {
		t.Fatalf("right salt: %v", err)
	}
	if err := cm.Open(salt, []byte("GET /search?q=porto")); !errors.Is(err, ErrCommitment) {
		t.Fatalf("wrong value opened: %v", err)
	}
	wrong := salt
	wrong[0] ^= 1
	if err := cm.Open(wrong, value); !errors.Is(err, ErrCommitment) {
		t.Fatalf("wrong salt opened: %v", err)
	}
	// Another record committing to the same value gets another salt: one
	// disclosure opens one record.
	r2 := sampleRecords()[1]
	if err := c.Commit(&r2, "request", value); err != nil {
		t.Fatal(err)
	}
	salt2, _ := c.Salt(&r2, "request")
	if salt2 == salt {
		t.Fatal("two records share a salt")
	}
	if err := cm.Open(salt2, value); !errors.Is(err, ErrCommitment) {
		t.Fatal("another record's salt opened this one")
	}
	// Another node's secret gives another salt.
	if s3, _ := NewCommitter([32]byte{9}).Salt(&r, "request"); s3 == salt {
		t.Fatal("two secrets give one salt")
	}
	// The commitment survives encoding.
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	cm2, _ := back.Commitment("request")
	if err := cm2.Open(salt, value); err != nil {
		t.Fatal(err)
	}
	if SecretFromKey(testKey(t)) == SecretFromKey(testKey(t)) {
		t.Fatal("two keys give one secret")
	}
}

func TestNodeVerifierKey(t *testing.T) {
	k := testKey(t)
	addr, _ := k.Public().Addr()
	origin, _ := Origin("example.org", addr)
	want, _ := VerifierKey(origin, k.Public())
	got, err := NodeVerifierKey(k.Public(), "example.org")
	if err != nil || got != want {
		t.Fatalf("NodeVerifierKey = %q, %v; want %q", got, err, want)
	}
}
