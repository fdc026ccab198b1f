package audit

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

var (
	addrA = netip.MustParseAddr("2001:21:4bc6:f39d:90d:70a2:9351:1c64")
	addrB = netip.MustParseAddr("2001:21:17ec:ae69:4224:9dde:7e1:9b34")
	addrW = netip.MustParseAddr("2001:21:94a6:4dbb:5039:1332:7e99:a622")
	t0    = time.Date(2026, 11, 26, 10, 0, 0, 123456789, time.UTC)
)

// sampleRecords returns one record of each kind, each with every field its
// kind allows set.
func sampleRecords() []Record {
	tr := TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	task := Pseudonym{0xaa, 1}
	flowStart := Record{
		Kind: KindFlowStart, Time: t0, Trace: tr, Src: addrA, Dst: addrB, SrcTask: task,
		DstTask: Pseudonym{0xbb}, Proto: 6, SrcPort: 40001, DstPort: 443, Role: RoleSource,
		Start: t0, Verdict: VerdictAllow, PolicyIDs: []string{"p1", "tools/allow"},
		Obligations: []string{"log=full", "via=" + addrW.String()}, Reason: "permit", Waypoints: []netip.Addr{addrW},
	}
	flowEnd := flowStart
	flowEnd.Kind = KindFlowEnd
	flowEnd.Time = t0.Add(time.Minute)
	flowEnd.End = t0.Add(time.Minute)
	flowEnd.EndReason = EndIdle
	flowEnd.Fwd = Counters{Packets: 1, Bytes: 1 << 40}
	flowEnd.Rev = Counters{Packets: 1<<64 - 1, Bytes: 300}
	flowEnd.PoT = PoTVerified
	flowEnd.Receipts = [][]byte{[]byte("receipt-of-w"), {0, 1, 2}}
	var dig [32]byte
	dig[0], dig[31] = 1, 2
	return []Record{
		flowStart,
		flowEnd,
		{Kind: KindAdmission, Time: t0, Subject: addrB, SPIFFEID: "spiffe://example.org/agent/tool",
			Outcome: OutcomeRefused, Digest: dig, TrustDomain: "example.org", Reason: "credential expired"},
		{Kind: KindRevocation, Time: t0, Digest: dig, SPIFFEID: "spiffe://example.org/agent/tool",
			TrustDomain: "example.org", Outcome: OutcomeApplied},
		{Kind: KindPolicy, Time: t0, Digest: dig, TrustDomain: "example.org", Serial: 42,
			Outcome: OutcomeApplied, PolicyIDs: []string{"doc-7"}},
		{Kind: KindDelegation, Time: t0, Trace: tr, Subject: addrW, Parent: addrA, Task: task, Depth: 2,
			NotAfter: t0.Add(time.Hour), Outcome: OutcomeIssued, Digest: dig},
		{Kind: KindEvidence, Time: t0, Subject: addrB, Origin: "example.org/agent6/audit/" + addrB.String(),
			Evidence: [][]byte{[]byte("old checkpoint"), []byte("new checkpoint")}, Reason: "fork"},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	c := NewCommitter([32]byte{7})
	for _, r := range sampleRecords() {
		if err := c.Commit(&r, "url", []byte("https://example.org/secret")); err != nil {
			t.Fatal(err)
		}
		if err := c.Commit(&r, "prompt_digest", []byte("abc")); err != nil {
			t.Fatal(err)
		}
		t.Run(r.Kind.String(), func(t *testing.T) {
			b, err := r.Encode()
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, r) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, r)
			}
			b2, err := got.Encode()
			if err != nil || !bytes.Equal(b, b2) {
				t.Fatalf("re-encoding differs: %x vs %x (%v)", b, b2, err)
			}
			if _, err := json.Marshal(got); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRecordGolden pins the encoding: a change here changes the format
// (docs/audit.md) and needs a new RecordVersion.
func TestRecordGolden(t *testing.T) {
	r := Record{Kind: KindFlowEnd, Time: time.Unix(0, 1).UTC(), Src: addrA, Dst: addrB, Proto: 17,
		DstPort: 53, Role: RoleDestination, End: time.Unix(0, 2).UTC(), EndReason: EndIdle,
		Fwd: Counters{Packets: 1, Bytes: 300}}
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	const want = "0102" + "0101" +
		"04" + "20010021" + "4bc6f39d" + "090d70a2" + "93511c64" +
		"05" + "20010021" + "17ecae69" + "42249dde" + "07e19b34" +
		"0811" + "0a35" + "0b02" + "0d02" + "0e03" + "0f01" + "10ac02"
	if got := hexString(b); got != want {
		t.Fatalf("encoding\n got %s\nwant %s", got, want)
	}
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	var sb strings.Builder
	for _, c := range b {
		sb.WriteByte(digits[c>>4])
		sb.WriteByte(digits[c&15])
	}
	return sb.String()
}

func TestRecordRefusesNonCanonical(t *testing.T) {
	base := sampleRecords()[1]
	good, err := base.Encode()
	if err != nil {
		t.Fatal(err)
	}
	// Position of the proto field (tag 8, value 6) in good.
	proto := bytes.Index(good, []byte{tagProto, 6})
	if proto < 0 {
		t.Fatal("no proto field")
	}
	splice := func(at, drop int, ins ...byte) []byte {
		out := append([]byte(nil), good[:at]...)
		out = append(out, ins...)
		return append(out, good[at+drop:]...)
	}
	cases := map[string]struct {
		b    []byte
		want error
	}{
		"version 2":          {append([]byte{2}, good[1:]...), ErrVersion},
		"unknown kind":       {append([]byte{1, 99}, good[2:]...), ErrRecord},
		"empty":              {nil, ErrRecord},
		"non-minimal varint": {splice(proto, 2, tagProto, 0x86, 0x00), ErrRecord},
		"zero value":         {splice(proto, 2, tagProto, 0), ErrRecord},
		"tag out of order":   {append(bytes.Clone(good), tagTime, 1), ErrRecord},
		"duplicate tag":      {splice(proto, 0, tagProto, 7), ErrRecord},
		"unknown tag":        {append(bytes.Clone(good), 60, 1), ErrRecord},
		"tag zero":           {append(bytes.Clone(good), 0), ErrRecord},
		"truncated":          {good[:len(good)-1], ErrRecord},
		"too large":          {make([]byte, MaxRecordSize+1), ErrTooLarge},
	}
	for name, tc := range cases {
		if _, err := Decode(tc.b); !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", name, err, tc.want)
		}
	}
}

func TestRecordRefusesFields(t *testing.T) {
	rs := sampleRecords()
	mod := func(i int, f func(r *Record)) Record {
		r := rs[i].clone()
		f(&r)
		return r
	}
	cases := map[string]Record{
		"flow without src":         mod(0, func(r *Record) { r.Src = netip.Addr{} }),
		"flow start with counters": mod(0, func(r *Record) { r.Fwd.Packets = 1 }),
		"admission with ports":     mod(2, func(r *Record) { r.DstPort = 1 }),
		"no time":                  mod(2, func(r *Record) { r.Time = time.Time{} }),
		"time before 1970":         mod(2, func(r *Record) { r.Time = time.Unix(-5, 0) }),
		"ipv4 address":             mod(2, func(r *Record) { r.Subject = netip.MustParseAddr("192.0.2.1") }),
		"mapped address":           mod(2, func(r *Record) { r.Subject = netip.MustParseAddr("::ffff:192.0.2.1") }),
		"control character":        mod(2, func(r *Record) { r.Reason = "a\nb" }),
		"invalid utf-8":            mod(2, func(r *Record) { r.Reason = "\xff" }),
		"long reason":              mod(2, func(r *Record) { r.Reason = strings.Repeat("x", maxString+1) }),
		"empty policy id":          mod(0, func(r *Record) { r.PolicyIDs = []string{""} }),
		"too many waypoints":       mod(0, func(r *Record) { r.Waypoints = make([]netip.Addr, maxWaypoints+1) }),
		"one evidence":             mod(6, func(r *Record) { r.Evidence = r.Evidence[:1] }),
		"nonce alone":              mod(2, func(r *Record) { r.Nonce[0] = 1 }),
		"commitments unordered": mod(2, func(r *Record) {
			r.Nonce[0] = 1
			r.Commitments = []Commitment{{Name: "b"}, {Name: "a"}}
		}),
		"unknown enum": mod(1, func(r *Record) { r.EndReason = 99 }),
		"unknown kind": {Kind: 0, Time: t0},
	}
	for name, r := range cases {
		if _, err := r.Encode(); !errors.Is(err, ErrRecord) {
			t.Errorf("%s: Encode err %v, want ErrRecord", name, err)
		}
	}
}

// TestRecordDecoderRefusesWhatEncodeRefuses feeds Decode the bytes of
// refused records written by hand, so the decoder's checks do not rest on
// the encoder's.
func TestRecordDecoderRefusesWhatEncodeRefuses(t *testing.T) {
	hdr := []byte{RecordVersion, byte(KindAdmission), tagTime, 1}
	sub := append([]byte{tagSubject}, addrB.AsSlice()...)
	out := []byte{tagOutcome, byte(OutcomeAdmitted)}
	ok := append(append(append([]byte(nil), hdr...), sub...), out...)
	if _, err := Decode(ok); err != nil {
		t.Fatalf("hand-written record: %v", err)
	}
	cases := map[string][]byte{
		"missing outcome":   append(append([]byte(nil), hdr...), sub...),
		"field not allowed": append(bytes.Clone(ok[:len(ok)-2]), append([]byte{tagOutcome, 1}, []byte{tagNotAfter, 1}...)...),
		"zero address":      append(append(append([]byte(nil), hdr...), append([]byte{tagSubject}, make([]byte, 16)...)...), out...),
		"mapped address": append(append(append([]byte(nil), hdr...),
			append([]byte{tagSubject}, netip.MustParseAddr("::ffff:1.2.3.4").AsSlice()...)...), out...),
		"outcome out of range": append(append(append([]byte(nil), hdr...), sub...), tagOutcome, 9),
		"reason with newline":  append(bytes.Clone(ok), tagSPIFFEID, 3, 'a', '\n', 'b'),
	}
	for name, b := range cases {
		if _, err := Decode(b); !errors.Is(err, ErrRecord) {
			t.Errorf("%s: Decode err %v, want ErrRecord", name, err)
		}
	}
	// A huge varint length must not allocate or panic.
	huge := binary.AppendUvarint(append(bytes.Clone(ok), tagSPIFFEID), 1<<62)
	if _, err := Decode(huge); !errors.Is(err, ErrRecord) {
		t.Errorf("huge length: %v", err)
	}
}

func TestLevel(t *testing.T) {
	start := Record{Kind: KindFlowStart, Verdict: VerdictAllow}
	deny := Record{Kind: KindFlowStart, Verdict: VerdictDeny}
	end := Record{Kind: KindFlowEnd}
	adm := Record{Kind: KindAdmission}
	for _, tc := range []struct {
		level                string
		start, deny, end, ad bool
	}{
		{"none", false, false, false, true},
		{"flow", false, true, true, true},
		{"log=full", true, true, true, true},
	} {
		l, err := ParseLevel(tc.level)
		if err != nil {
			t.Fatal(err)
		}
		if l.Keeps(&start) != tc.start || l.Keeps(&deny) != tc.deny || l.Keeps(&end) != tc.end || l.Keeps(&adm) != tc.ad {
			t.Errorf("level %s keeps start %v deny %v end %v admission %v", l, l.Keeps(&start), l.Keeps(&deny), l.Keeps(&end), l.Keeps(&adm))
		}
	}
	if _, err := ParseLevel("packets"); err == nil {
		t.Error("ParseLevel accepted packets")
	}
	if Level(0) != LevelFlow {
		t.Error("zero Level is not LevelFlow")
	}
}

func TestTraceID(t *testing.T) {
	id := NewTraceID()
	got, err := ParseTraceID(id.String())
	if err != nil || got != id {
		t.Fatalf("ParseTraceID(%s) = %v, %v", id, got, err)
	}
	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	got, err = ParseTraceParent(tp)
	if err != nil || got.String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("ParseTraceParent = %v, %v", got, err)
	}
	for _, bad := range []string{
		"00000000000000000000000000000000", "4BF92F3577B34DA6A3CE929D0E0E4736", "4bf92f", "zz" + strings.Repeat("0", 30),
	} {
		if _, err := ParseTraceID(bad); err == nil {
			t.Errorf("ParseTraceID(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"} {
		if _, err := ParseTraceParent(bad); err == nil {
			t.Errorf("ParseTraceParent(%q) accepted", bad)
		}
	}
}

func FuzzDecode(f *testing.F) {
	for _, r := range sampleRecords() {
		b, _ := r.Encode()
		f.Add(b)
	}
	f.Add([]byte{1, 1})
	f.Add([]byte{1, 2, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Decode(b)
		if err != nil {
			return
		}
		// Canonical: what decodes re-encodes to exactly the same bytes.
		b2, err := r.Encode()
		if err != nil {
			t.Fatalf("decoded record does not encode: %v", err)
		}
		if !bytes.Equal(b, b2) {
			t.Fatalf("not canonical:\n in %x\nout %x", b, b2)
		}
	})
}
