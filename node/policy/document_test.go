package policy

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
)

const allowTools = `@id("tools") permit (principal in Group::"planners", action, resource in Group::"tools");`

var toolsTests = &Tests{
	Agents: map[string]AgentFixture{"planner": {Groups: []string{"planners"}}, "search": {Groups: []string{"tools"}}},
	Cases: []TestCase{
		{Name: "planner reaches search", From: "planner", To: "search", Port: 443, Expect: "allow", Policy: "tools"},
		{Name: "search does not reach planner", From: "search", To: "planner", Port: 443, Expect: "deny", Reason: "policy_denied"},
	},
}

func TestDocumentRoundTrip(t *testing.T) {
	ca := testCA(t, "example.org")
	rec := mustSign(t, ca, 7, allowTools, toolsTests)
	d, err := Verify(bundleOf(t, ca), rec)
	if err != nil {
		t.Fatal(err)
	}
	if d.TrustDomain != "example.org" || d.Serial != 7 || d.Name != "test.cedar" || d.Policy != allowTools ||
		!d.IssuedAt.Equal(time.Unix(1767236645, 0)) || len(d.Tests.Cases) != 2 || d.Tests.Agents["search"].Groups[0] != "tools" {
		t.Errorf("round trip: %+v", d)
	}
	// The file form round-trips too.
	path := filepath.Join(t.TempDir(), "p.signed")
	if err := WriteFile(path, rec); err != nil {
		t.Fatal(err)
	}
	back, err := LoadFile(path)
	if err != nil || !bytes.Equal(back.Marshal(), rec.Marshal()) {
		t.Fatalf("file round trip: %v", err)
	}
	if b, _ := os.ReadFile(path); !bytes.HasPrefix(b, []byte("-----BEGIN AGENT6 POLICY-----")) {
		t.Errorf("file starts %q", b[:40])
	}
}

// TestDocumentCanonical: a payload that decodes to the same document but is
// not its canonical encoding is refused, as is a header that disagrees
// with the body.
func TestDocumentCanonical(t *testing.T) {
	d := mustCompile(t, "example.org", 2, allowTools, nil)
	good, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(good); err != nil {
		t.Fatal(err)
	}
	withBody := func(td string, serial uint64, body string) []byte {
		var b bytes.Buffer
		b.WriteByte(FormatVersion)
		b.WriteByte(byte(len(td)))
		b.WriteString(td)
		b.Write(binary.BigEndian.AppendUint64(nil, serial))
		w, _ := flate.NewWriter(&b, flate.DefaultCompression)
		w.Write([]byte(body))
		w.Close()
		return b.Bytes()
	}
	body := string(d.body())
	cases := map[string][]byte{
		"spaces":         withBody("example.org", 2, strings.Replace(body, `"v":1,`, `"v": 1,`, 1)),
		"field order":    withBody("example.org", 2, strings.Replace(body, `{"v":1,"td":"example.org",`, `{"td":"example.org","v":1,`, 1)),
		"unknown field":  withBody("example.org", 2, strings.Replace(body, `{"v":1,`, `{"v":1,"x":1,`, 1)),
		"version":        withBody("example.org", 2, strings.Replace(body, `{"v":1,`, `{"v":2,`, 1)),
		"header serial":  withBody("example.org", 3, body),
		"header domain":  withBody("example.com", 2, body),
		"html escape":    withBody("example.org", 2, strings.Replace(body, `planners`, `planner\u0073`, 1)),
		"trailing data":  withBody("example.org", 2, body+" "),
		"not deflate":    append(good[:2+11+8:2+11+8], 0xff, 0xff, 0xff),
		"format version": append([]byte{2}, good[1:]...),
		"short":          good[:5],
	}
	for name, p := range cases {
		if _, err := Decode(p); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err %v, want ErrMalformed", name, err)
		}
	}
	bomb := withBody("example.org", 2, `{"v":1,"td":"example.org","serial":2,"issued_at":0,"policy":"`+strings.Repeat(" ", MaxDocumentSize)+`"}`)
	if len(bomb) > 4<<10 {
		t.Fatalf("bomb is %d bytes compressed", len(bomb))
	}
	if _, err := Decode(bomb); !errors.Is(err, ErrTooLarge) {
		t.Errorf("a payload inflating past %d bytes: err %v, want ErrTooLarge", MaxDocumentSize, err)
	}
}

// TestApplyRefusals: each way a document can be bad is refused with its
// own reason, counted, and changes nothing.
func TestApplyRefusals(t *testing.T) {
	ca, other, partner := testCA(t, "example.org"), testCA(t, "example.org"), testCA(t, "partner.example")
	e := New(Config{Bundle: bundleOf(t, ca, partner)})
	v5 := mustSign(t, ca, 5, allowTools, toolsTests)
	if _, err := e.Apply(v5); err != nil {
		t.Fatal(err)
	}
	gen := e.Generation()

	forged := v5
	forged.Payload = bytes.Clone(v5.Payload)
	forged.Payload[len(forged.Payload)-1] ^= 1
	binary.BigEndian.PutUint64(forged.Payload[2+11:], 9)

	failing, _ := Compile(&Document{TrustDomain: "example.org", Serial: 6, Policy: allowTools, Tests: &Tests{
		Agents: map[string]AgentFixture{"planner": {Groups: []string{"planners"}}, "search": {}},
		Cases:  []TestCase{{Name: "planner reaches search", From: "planner", To: "search", Port: 443, Expect: "allow"}},
	}})
	failingPayload, _ := failing.Marshal()
	failingRec, _ := ca.SignPolicy(failingPayload) // as a careless signer would, without running the tests

	syntax, _ := ca.SignPolicy(rawPayload(t, "example.org", 8, "permit (principal,"))
	schemaBad, _ := ca.SignPolicy(rawPayload(t, "example.org", 8, `permit (principal, action, resource) when { principal.nope };`))
	annotBad, _ := ca.SignPolicy(rawPayload(t, "example.org", 8, `@ratee("1") permit (principal, action, resource);`))
	stranger := testCA(t, "stranger.example")
	strangerRec := mustSign(t, stranger, 1, allowTools, nil)
	revocation := mustSign(t, ca, 9, allowTools, nil)
	revocation.Type = identity.RecordRevocation

	cases := []struct {
		name   string
		rec    identity.SignedRecord
		reason error
	}{
		{"older serial", mustSign(t, ca, 4, allowTools, nil), ErrReplay},
		{"equal serial, other text", mustSign(t, ca, 5, allowTools+"\n", nil), ErrReplay},
		{"signed by another CA of the domain", mustSign(t, other, 6, allowTools, nil), ErrUntrusted},
		{"signed by the partner's CA", resign(t, partner, mustSign(t, ca, 6, allowTools, nil)), ErrUntrusted},
		{"domain not in the bundle", strangerRec, ErrUnknownDomain},
		{"forged", forged, ErrBadSignature},
		{"failing tests", failingRec, ErrTestsFailed},
		{"syntax", syntax, ErrSyntax},
		{"schema", schemaBad, ErrSchema},
		{"annotation", annotBad, ErrAnnotation},
		{"wrong record type", revocation, ErrMalformed},
	}
	for _, c := range cases {
		_, err := e.Apply(c.rec)
		if !errors.Is(err, c.reason) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.reason)
		}
	}
	if e.Generation() != gen || e.Document("example.org").Serial != 5 {
		t.Errorf("a refusal changed the state: generation %d (was %d), serial %d", e.Generation(), gen, e.Document("example.org").Serial)
	}
	st := e.Stats()
	for reason, want := range map[string]uint64{
		"replay": 2, "untrusted_signer": 2, "unknown_domain": 1, "bad_signature": 1, "tests_failed": 1,
		"syntax": 1, "schema": 1, "annotation": 1, "malformed": 1,
	} {
		if st.Refused[reason] != want {
			t.Errorf("refused[%s] = %d, want %d (%v)", reason, st.Refused[reason], want, st.Refused)
		}
	}
	// The same document again, as gossip delivers it, is no refusal.
	if d, err := e.Apply(v5); err != nil || d.Serial != 5 || e.Stats().Duplicates != 1 {
		t.Errorf("the document in force again: %v", err)
	}
	// A newer one replaces it.
	if _, err := e.Apply(mustSign(t, ca, 6, allowTools, nil)); err != nil || e.Document("example.org").Serial != 6 || e.Generation() == gen {
		t.Errorf("serial 6: %v", err)
	}
}

// rawPayload encodes a document without compiling it, as a hostile or
// buggy signer could.
func rawPayload(t *testing.T, td string, serial uint64, text string) []byte {
	t.Helper()
	p, err := (&Document{TrustDomain: td, Serial: serial, Policy: text}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// resign signs rec's payload with another CA's key.
func resign(t *testing.T, ca *identity.CA, rec identity.SignedRecord) identity.SignedRecord {
	t.Helper()
	r, err := ca.SignPolicy(rec.Payload)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestSignRefusesFailingTests(t *testing.T) {
	ca := testCA(t, "example.org")
	tests := &Tests{
		Agents: map[string]AgentFixture{"planner": {Groups: []string{"planners"}}, "search": {Groups: []string{"tools"}}},
		Cases: []TestCase{
			{Name: "ok", From: "planner", To: "search", Port: 443, Expect: "allow"},
			{Name: "wrong", From: "search", To: "planner", Port: 443, Expect: "allow"},
		},
	}
	_, rep, err := Sign(ca, &Document{TrustDomain: "example.org", Serial: 1, Policy: allowTools, Tests: tests})
	if !errors.Is(err, ErrTestsFailed) || !strings.Contains(err.Error(), `test "wrong": expected allow, got deny`) {
		t.Fatalf("err %v", err)
	}
	if rep == nil || len(rep.Results) != 2 || !rep.Results[0].Pass || rep.Results[1].Pass {
		t.Errorf("report %+v", rep)
	}
	if _, _, err := Sign(testCA(t, "partner.example"), &Document{TrustDomain: "example.org", Serial: 1, Policy: allowTools}); err == nil {
		t.Error("a CA signed another domain's document")
	}
}

func TestDocumentTooLarge(t *testing.T) {
	// Distinct policies compress poorly: enough of them overflow a record.
	var b strings.Builder
	for i := range 4000 {
		b.WriteString(`permit (principal == Agent::"` + FixtureAddr(string(rune(i+'A'))+"x").String() + `", action, resource);` + "\n")
	}
	d := mustCompile(t, "example.org", 1, b.String(), nil)
	if _, err := d.Marshal(); !errors.Is(err, ErrTooLarge) {
		t.Errorf("%d bytes of Cedar: err %v, want ErrTooLarge", b.Len(), err)
	}
}

func TestParsePEM(t *testing.T) {
	ca := testCA(t, "example.org")
	rec := mustSign(t, ca, 1, allowTools, nil)
	pemBytes := MarshalPEM(rec)
	if _, err := ParsePEM(pemBytes); err != nil {
		t.Fatal(err)
	}
	rev := identity.MarshalRevocationPEM(rec)
	for name, data := range map[string][]byte{
		"empty":      nil,
		"other type": rev,
		"garbage":    []byte("-----BEGIN AGENT6 POLICY-----\nAAAA\n-----END AGENT6 POLICY-----\n"),
	} {
		if _, err := ParsePEM(data); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err %v, want ErrMalformed", name, err)
		}
	}
	bad := rec
	bad.Signature = bytes.Clone(rec.Signature)
	bad.Signature[0] ^= 1
	if _, err := ParsePEM(MarshalPEM(bad)); !errors.Is(err, ErrBadSignature) {
		t.Errorf("bad signature: err %v", err)
	}
}
