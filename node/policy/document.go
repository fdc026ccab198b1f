package policy

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agent6/agent6/identity"
)

// Bounds on a document. A document travels as one signed record, whose
// payload is at most identity.MaxRecordPayload (65,535) bytes compressed;
// these bound what it may expand to and hold.
const (
	MaxDocumentSize = 1 << 20 // the canonical JSON, decompressed
	MaxPolicies     = 5000
	MaxTests        = 1000
	MaxFixtures     = 1000 // agents and tasks, each
)

// FormatVersion is the version of the document payload format.
const FormatVersion = 1

// Document is a trust domain's policy: Cedar text, the tests it must pass,
// and a serial that orders its versions (the highest valid serial wins).
// It travels as the payload of an identity.SignedRecord of type
// identity.RecordPolicy, signed by a CA of its trust domain.
//
// A Document from Verify, Decode or Compile is compiled and immutable; a
// Document built by hand must go through Compile before an Engine takes it.
type Document struct {
	TrustDomain string
	Serial      uint64
	IssuedAt    time.Time // when it was signed; informative
	Name        string    // the Cedar file it was signed from, for messages
	Policy      string    // the Cedar text
	Tests       *Tests    // nil: no tests

	c      *compiled
	digest [32]byte // SHA-256 of the signed payload, when it came as a record
}

// String names the document in messages: "example.org serial 7 (deploy.cedar)".
func (d *Document) String() string {
	s := fmt.Sprintf("%s serial %d", d.TrustDomain, d.Serial)
	if d.Name != "" {
		s += " (" + d.Name + ")"
	}
	return s
}

// Policies describes the document's policies, in document order.
func (d *Document) Policies() []PolicyInfo {
	if d.c == nil {
		return nil
	}
	out := make([]PolicyInfo, len(d.c.policies))
	for i := range d.c.policies {
		out[i] = d.c.policies[i].info()
	}
	return out
}

// Compile checks d and prepares it for evaluation: the trust domain, the
// Cedar text (syntax, schema, annotations), the tests' definitions; it
// does not run the tests (RunTests does). It returns d, compiled, or an
// *Error naming what is wrong.
func Compile(d *Document) (*Document, error) {
	if _, err := spiffeid.TrustDomainFromString(d.TrustDomain); err != nil || strings.Contains(d.TrustDomain, ":") {
		return nil, &Error{Reason: ErrMalformed, Doc: d.String(), Msg: fmt.Sprintf("trust domain %q is not a bare trust domain name", d.TrustDomain)}
	}
	if d.Serial == 0 {
		return nil, &Error{Reason: ErrMalformed, Doc: d.String(), Msg: "serial 0: serials start at 1"}
	}
	if !utf8.ValidString(d.Policy) || !utf8.ValidString(d.Name) || len(d.Name) > 255 {
		return nil, &Error{Reason: ErrMalformed, Doc: d.String(), Msg: "policy text or name is not UTF-8, or the name is longer than 255 bytes"}
	}
	c, err := compile(d.Policy, d.String())
	if err != nil {
		return nil, err
	}
	if d.Tests != nil {
		if err := d.Tests.check(d.TrustDomain); err != nil {
			return nil, &Error{Reason: ErrTests, Doc: d.String(), Msg: err.Error()}
		}
	}
	d.c = c
	return d, nil
}

// docJSON is the canonical body: compact JSON, fields in this order,
// times in Unix seconds, no HTML escaping, and nothing else.
type docJSON struct {
	V        int    `json:"v"`
	TD       string `json:"td"`
	Serial   uint64 `json:"serial"`
	IssuedAt int64  `json:"issued_at"`
	Name     string `json:"name,omitempty"`
	Policy   string `json:"policy"`
	Tests    *Tests `json:"tests,omitempty"`
}

func (d *Document) body() []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(docJSON{
		V: FormatVersion, TD: d.TrustDomain, Serial: d.Serial, IssuedAt: d.IssuedAt.Unix(),
		Name: d.Name, Policy: d.Policy, Tests: d.Tests,
	}); err != nil {
		panic("policy: encode document: " + err.Error()) // strings, integers and plain structs
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// Marshal returns the record payload of d:
//
//	version(1)=1 | len(1) | trust domain | serial(8, big endian) | DEFLATE(body)
//
// where body is the canonical JSON
//
//	{"v":1,"td":"example.org","serial":7,"issued_at":1767236645,
//	 "name":"deploy.cedar","policy":"<Cedar text>","tests":{...}}
//
// The trust domain and serial stand in clear before the compressed body so
// that a receiver can refuse a replay or a stranger's document before it
// checks a signature or inflates anything.
func (d *Document) Marshal() ([]byte, error) {
	body := d.body()
	if len(body) > MaxDocumentSize {
		return nil, &Error{Reason: ErrTooLarge, Doc: d.String(), Msg: fmt.Sprintf("%d bytes of JSON, more than %d", len(body), MaxDocumentSize)}
	}
	if len(d.TrustDomain) > 255 {
		return nil, &Error{Reason: ErrMalformed, Doc: d.String(), Msg: "trust domain longer than 255 bytes"}
	}
	var buf bytes.Buffer
	buf.WriteByte(FormatVersion)
	buf.WriteByte(byte(len(d.TrustDomain)))
	buf.WriteString(d.TrustDomain)
	buf.Write(binary.BigEndian.AppendUint64(nil, d.Serial))
	w, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		return nil, err
	}
	w.Write(body)
	w.Close()
	if buf.Len() > identity.MaxRecordPayload {
		return nil, &Error{Reason: ErrTooLarge, Doc: d.String(), Msg: fmt.Sprintf("%d bytes compressed, more than a record's %d", buf.Len(), identity.MaxRecordPayload)}
	}
	return buf.Bytes(), nil
}

// Header is what a payload says in clear: enough to refuse it cheaply.
type Header struct {
	TrustDomain string
	Serial      uint64
}

// ParseHeader reads the clear header of a document payload.
func ParseHeader(payload []byte) (Header, error) {
	if len(payload) < 2 {
		return Header{}, &Error{Reason: ErrMalformed, Msg: "payload too short"}
	}
	if payload[0] != FormatVersion {
		return Header{}, &Error{Reason: ErrMalformed, Msg: fmt.Sprintf("format version %d, want %d", payload[0], FormatVersion)}
	}
	n := int(payload[1])
	if len(payload) < 2+n+8 {
		return Header{}, &Error{Reason: ErrMalformed, Msg: "payload too short"}
	}
	return Header{TrustDomain: string(payload[2 : 2+n]), Serial: binary.BigEndian.Uint64(payload[2+n:])}, nil
}

// Decode decodes and compiles a document payload, refusing anything but
// the canonical encoding. It does not check who signed it (Verify does)
// and does not run its tests.
func Decode(payload []byte) (*Document, error) {
	h, err := ParseHeader(payload)
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("%s serial %d", h.TrustDomain, h.Serial)
	bad := func(reason error, format string, a ...any) error {
		return &Error{Reason: reason, Doc: name, Msg: fmt.Sprintf(format, a...)}
	}
	r := flate.NewReader(bytes.NewReader(payload[2+len(h.TrustDomain)+8:]))
	body, err := io.ReadAll(io.LimitReader(r, MaxDocumentSize+1))
	if err != nil {
		return nil, bad(ErrMalformed, "inflate: %v", err)
	}
	if len(body) > MaxDocumentSize {
		return nil, bad(ErrTooLarge, "more than %d bytes of JSON", MaxDocumentSize)
	}
	var j docJSON
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return nil, bad(ErrMalformed, "body: %v", err)
	}
	if j.V != FormatVersion {
		return nil, bad(ErrMalformed, "body version %d, want %d", j.V, FormatVersion)
	}
	if j.TD != h.TrustDomain || j.Serial != h.Serial {
		return nil, bad(ErrMalformed, "body says %s serial %d, header %s serial %d", j.TD, j.Serial, h.TrustDomain, h.Serial)
	}
	if j.Tests != nil {
		if len(j.Tests.Cases) > MaxTests || len(j.Tests.Agents) > MaxFixtures || len(j.Tests.Tasks) > MaxFixtures {
			return nil, bad(ErrTooLarge, "more than %d tests or %d agents or tasks", MaxTests, MaxFixtures)
		}
	}
	d := &Document{
		TrustDomain: j.TD, Serial: j.Serial, IssuedAt: time.Unix(j.IssuedAt, 0).UTC(),
		Name: j.Name, Policy: j.Policy, Tests: j.Tests,
	}
	// One document, one body: a reader never sees two encodings of it.
	if !bytes.Equal(d.body(), body) {
		return nil, bad(ErrMalformed, "body is not in canonical form")
	}
	return Compile(d)
}

// Sign compiles d, runs its tests, and signs it with the CA of its trust
// domain. It refuses (ErrTestsFailed, with the report) when a test fails.
func Sign(ca *identity.CA, d *Document) (identity.SignedRecord, *TestReport, error) {
	if ca.TrustDomain() != d.TrustDomain {
		return identity.SignedRecord{}, nil, fmt.Errorf("policy: sign: the CA is of trust domain %q, the document of %q", ca.TrustDomain(), d.TrustDomain)
	}
	if _, err := Compile(d); err != nil {
		return identity.SignedRecord{}, nil, err
	}
	report := RunTests(d)
	if err := report.Err(); err != nil {
		return identity.SignedRecord{}, report, err
	}
	payload, err := d.Marshal()
	if err != nil {
		return identity.SignedRecord{}, report, err
	}
	rec, err := ca.SignPolicy(payload)
	if err != nil {
		return identity.SignedRecord{}, report, fmt.Errorf("policy: sign: %w", err)
	}
	return rec, report, nil
}

// Verify checks that rec is a policy document signed by a CA that bundle
// holds for the document's trust domain, whose Cedar text compiles and
// whose tests pass, and returns it. The cheap refusals come first: record
// type and header, trust domain and signer, then the signature, and only
// then inflating, parsing and testing. Whether its serial is newer than
// the one in force is the Engine's question.
func Verify(bundle *identity.Bundle, rec identity.SignedRecord) (*Document, error) {
	if rec.Type != identity.RecordPolicy {
		return nil, &Error{Reason: ErrMalformed, Msg: fmt.Sprintf("%s record, want %s", rec.Type, identity.RecordPolicy)}
	}
	h, err := ParseHeader(rec.Payload)
	if err != nil {
		return nil, err
	}
	if err := checkSigner(bundle, h, rec); err != nil {
		return nil, err
	}
	return decodeAndTest(rec.Payload)
}

func checkSigner(bundle *identity.Bundle, h Header, rec identity.SignedRecord) error {
	name := fmt.Sprintf("%s serial %d", h.TrustDomain, h.Serial)
	if bundle == nil || len(bundle.Certificates(h.TrustDomain)) == 0 {
		return &Error{Reason: ErrUnknownDomain, Doc: name, Msg: fmt.Sprintf("trust domain %q is not in the bundle", h.TrustDomain)}
	}
	if !bundle.IsCAKey(h.TrustDomain, rec.Signer) {
		return &Error{Reason: ErrUntrusted, Doc: name, Msg: fmt.Sprintf("signer %s is not a CA of %s", rec.Signer, h.TrustDomain)}
	}
	if err := rec.Verify(); err != nil {
		return &Error{Reason: ErrBadSignature, Doc: name, Msg: "the signature does not verify"}
	}
	return nil
}

func decodeAndTest(payload []byte) (*Document, error) {
	d, err := Decode(payload)
	if err != nil {
		return nil, err
	}
	if err := RunTests(d).Err(); err != nil {
		return nil, err
	}
	return d, nil
}

// PEMType is the PEM block type of a signed policy document file.
const PEMType = "AGENT6 POLICY"

// MarshalPEM returns the file form of a signed document: its SignedRecord
// encoding in a PEM block of type "AGENT6 POLICY".
func MarshalPEM(rec identity.SignedRecord) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: PEMType, Bytes: rec.Marshal()})
}

// ParsePEM decodes a signed document file and checks the record's type
// and its own signature. Whether the signer is a CA is Verify's question.
func ParsePEM(data []byte) (identity.SignedRecord, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return identity.SignedRecord{}, &Error{Reason: ErrMalformed, Msg: fmt.Sprintf("no PEM block (want %q)", PEMType)}
	}
	if block.Type != PEMType {
		return identity.SignedRecord{}, &Error{Reason: ErrMalformed, Msg: fmt.Sprintf("PEM block is %q, want %q", block.Type, PEMType)}
	}
	rec, err := identity.DecodeSignedRecord(block.Bytes)
	if err != nil {
		return identity.SignedRecord{}, &Error{Reason: ErrMalformed, Msg: err.Error()}
	}
	if rec.Type != identity.RecordPolicy {
		return identity.SignedRecord{}, &Error{Reason: ErrMalformed, Msg: fmt.Sprintf("%s record, want %s", rec.Type, identity.RecordPolicy)}
	}
	if err := rec.Verify(); err != nil {
		return identity.SignedRecord{}, &Error{Reason: ErrBadSignature, Msg: "the signature does not verify"}
	}
	return rec, nil
}

// LoadFile reads a signed document file (see ParsePEM).
func LoadFile(path string) (identity.SignedRecord, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return identity.SignedRecord{}, fmt.Errorf("policy: %w", err)
	}
	rec, err := ParsePEM(data)
	if err != nil {
		return identity.SignedRecord{}, fmt.Errorf("%s: %w", path, err)
	}
	return rec, nil
}

// WriteFile writes rec to path in the file form (MarshalPEM), mode 0644,
// replacing it through a rename so that a reader never sees half a file.
func WriteFile(path string, rec identity.SignedRecord) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, MarshalPEM(rec), 0o644); err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("policy: %w", err)
	}
	return nil
}

// SerialFile is the file in a CA directory where `agent6 policy sign`
// records the last serial it signed for the CA's trust domain, so that the
// next document takes the next serial.
const SerialFile = "policy.serial"

// LastSerial returns the last serial recorded in the CA directory dir, 0
// when none is.
func LastSerial(dir string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, SerialFile))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("policy: %w", err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("policy: %s: not a serial number", filepath.Join(dir, SerialFile))
	}
	return n, nil
}

// RecordSerial records serial as the last signed in the CA directory dir.
func RecordSerial(dir string, serial uint64) error {
	path := filepath.Join(dir, SerialFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatUint(serial, 10)+"\n"), 0o644); err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("policy: %w", err)
	}
	return nil
}
