package audit

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"time"
	"unicode"
	"unicode/utf8"
)

// The encoding (docs/audit.md has the table):
//
//	record = version(1 byte, =1) | kind(1 byte) | field*
//	field  = tag(1 byte) | value
//
// Fields appear in increasing tag order, a repeated field's values one after
// another in their given order; a field whose value is zero is absent. Values
// are unsigned LEB128 varints of minimal length (numbers, enums, times as
// Unix nanoseconds), fixed 16 bytes (addresses, ids, pseudonyms), fixed 32
// bytes (digests), or a varint length and that many bytes (strings, opaque
// bytes). One record has exactly one encoding: Decode refuses anything
// Encode would not have written.

const (
	tagTime = 1 + iota
	tagTrace
	tagNonce
	tagSrc
	tagDst
	tagSrcTask
	tagDstTask
	tagProto
	tagSrcPort
	tagDstPort
	tagRole
	tagStart
	tagEnd
	tagEndReason
	tagFwdPackets
	tagFwdBytes
	tagRevPackets
	tagRevBytes
	tagVerdict
	tagPolicyID
	tagObligation
	tagReason
	tagWaypoint
	tagPoT
	tagReceipt
	tagSubject
	tagSPIFFEID
	tagOutcome
	tagDigest
	tagTrustDomain
	tagSerial
	tagParent
	tagTask
	tagDepth
	tagNotAfter
	tagOrigin
	tagEvidence
	tagCommitment
	tagLimit // first unused tag
)

type fieldMask uint64

func mask(tags ...int) fieldMask {
	var m fieldMask
	for _, t := range tags {
		m |= 1 << t
	}
	return m
}

var (
	commonFields = mask(tagTime, tagTrace, tagNonce, tagReason, tagCommitment)
	flowFields   = mask(tagSrc, tagDst, tagSrcTask, tagDstTask, tagProto, tagSrcPort, tagDstPort,
		tagRole, tagStart, tagVerdict, tagPolicyID, tagObligation, tagWaypoint)
	flowEndFields = flowFields | mask(tagEnd, tagEndReason, tagFwdPackets, tagFwdBytes,
		tagRevPackets, tagRevBytes, tagPoT, tagReceipt)

	// allowed lists, per kind, the fields a record may carry.
	allowed = [...]fieldMask{
		KindFlowStart:  commonFields | flowFields,
		KindFlowEnd:    commonFields | flowEndFields,
		KindAdmission:  commonFields | mask(tagSubject, tagSPIFFEID, tagOutcome, tagDigest, tagTrustDomain),
		KindRevocation: commonFields | mask(tagDigest, tagSPIFFEID, tagTrustDomain, tagOutcome),
		KindPolicy:     commonFields | mask(tagDigest, tagTrustDomain, tagSerial, tagOutcome, tagPolicyID),
		KindDelegation: commonFields | mask(tagSubject, tagParent, tagTask, tagDepth, tagNotAfter, tagOutcome, tagDigest),
		KindEvidence:   commonFields | mask(tagSubject, tagOrigin, tagEvidence),
	}
	// required lists, per kind, the fields a record must carry.
	required = [...]fieldMask{
		KindFlowStart:  mask(tagTime, tagSrc, tagDst, tagProto, tagRole),
		KindFlowEnd:    mask(tagTime, tagSrc, tagDst, tagProto, tagRole, tagEnd, tagEndReason),
		KindAdmission:  mask(tagTime, tagSubject, tagOutcome),
		KindRevocation: mask(tagTime, tagDigest, tagOutcome),
		KindPolicy:     mask(tagTime, tagDigest, tagTrustDomain, tagOutcome),
		KindDelegation: mask(tagTime, tagSubject, tagParent, tagOutcome),
		KindEvidence:   mask(tagTime, tagOrigin, tagEvidence),
	}
)

var tagNames = [tagLimit]string{
	tagTime: "time", tagTrace: "trace", tagNonce: "nonce", tagSrc: "src", tagDst: "dst",
	tagSrcTask: "src_task", tagDstTask: "dst_task", tagProto: "proto", tagSrcPort: "src_port",
	tagDstPort: "dst_port", tagRole: "role", tagStart: "start", tagEnd: "end",
	tagEndReason: "end_reason", tagFwdPackets: "fwd.packets", tagFwdBytes: "fwd.bytes",
	tagRevPackets: "rev.packets", tagRevBytes: "rev.bytes", tagVerdict: "verdict",
	tagPolicyID: "policy_id", tagObligation: "obligation", tagReason: "reason",
	tagWaypoint: "waypoint", tagPoT: "pot", tagReceipt: "receipt", tagSubject: "subject",
	tagSPIFFEID: "spiffe_id", tagOutcome: "outcome", tagDigest: "digest",
	tagTrustDomain: "trust_domain", tagSerial: "serial", tagParent: "parent", tagTask: "task",
	tagDepth: "depth", tagNotAfter: "not_after", tagOrigin: "origin", tagEvidence: "evidence",
	tagCommitment: "commitment",
}

// encoder appends fields in tag order and notes which it wrote.
type encoder struct {
	b    []byte
	seen fieldMask
	err  error
}

func (e *encoder) tag(t int) {
	e.b = append(e.b, byte(t))
	e.seen |= 1 << t
}

func (e *encoder) fail(t int, format string, args ...any) {
	if e.err == nil {
		e.err = fmt.Errorf("%w: %s: %s", ErrRecord, tagNames[t], fmt.Sprintf(format, args...))
	}
}

func (e *encoder) uint(t int, v uint64) {
	if v == 0 {
		return
	}
	e.tag(t)
	e.b = binary.AppendUvarint(e.b, v)
}

func (e *encoder) time(t int, v time.Time) {
	if v.IsZero() {
		return
	}
	ns := v.UnixNano()
	if ns <= 0 || !v.Equal(time.Unix(0, ns)) {
		e.fail(t, "%v is outside 1970..2262", v)
		return
	}
	e.uint(t, uint64(ns))
}

func (e *encoder) addr(t int, a netip.Addr) {
	if !a.IsValid() {
		return
	}
	if !a.Is6() || a.Zone() != "" || a.IsUnspecified() || a.Is4In6() {
		e.fail(t, "%v is not an IPv6 address", a)
		return
	}
	e.tag(t)
	b := a.As16()
	e.b = append(e.b, b[:]...)
}

func (e *encoder) fixed(t int, v []byte) {
	if isZero(v) {
		return
	}
	e.tag(t)
	e.b = append(e.b, v...)
}

func (e *encoder) bytes(t int, v []byte, max int) {
	if len(v) == 0 {
		return
	}
	if len(v) > max {
		e.fail(t, "%d bytes, at most %d", len(v), max)
		return
	}
	e.tag(t)
	e.b = binary.AppendUvarint(e.b, uint64(len(v)))
	e.b = append(e.b, v...)
}

func (e *encoder) string(t int, s string, max int) {
	if err := checkString(s, max); err != nil {
		e.fail(t, "%v", err)
		return
	}
	e.bytes(t, []byte(s), max)
}

func (e *encoder) strings(t int, ss []string, max, count int) {
	if len(ss) > count {
		e.fail(t, "%d values, at most %d", len(ss), count)
		return
	}
	for _, s := range ss {
		if s == "" {
			e.fail(t, "empty value")
			return
		}
		e.string(t, s, max)
	}
}

// checkString refuses what would make a record ambiguous or unsafe to print:
// invalid UTF-8 and control characters.
func checkString(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%d bytes, at most %d", len(s), max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("not UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("control character %U", r)
		}
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Encode returns r's canonical encoding. It refuses a record whose kind is
// unknown, which lacks a field its kind requires or carries one its kind
// does not allow, or whose values are out of bounds.
func (r *Record) Encode() ([]byte, error) {
	return r.AppendEncode(make([]byte, 0, 160))
}

// AppendEncode appends r's canonical encoding to b (see Encode).
func (r *Record) AppendEncode(b []byte) ([]byte, error) {
	if !r.Kind.valid() {
		return b, fmt.Errorf("%w: unknown kind %d", ErrRecord, r.Kind)
	}
	e := encoder{b: append(b, RecordVersion, byte(r.Kind))}
	start := len(b)
	e.time(tagTime, r.Time)
	e.fixed(tagTrace, r.Trace[:])
	e.fixed(tagNonce, r.Nonce[:])
	e.addr(tagSrc, r.Src)
	e.addr(tagDst, r.Dst)
	e.fixed(tagSrcTask, r.SrcTask[:])
	e.fixed(tagDstTask, r.DstTask[:])
	e.uint(tagProto, uint64(r.Proto))
	e.uint(tagSrcPort, uint64(r.SrcPort))
	e.uint(tagDstPort, uint64(r.DstPort))
	e.enum(tagRole, uint8(r.Role), len(roleNames))
	e.time(tagStart, r.Start)
	e.time(tagEnd, r.End)
	e.enum(tagEndReason, uint8(r.EndReason), len(endReasonNames))
	e.uint(tagFwdPackets, r.Fwd.Packets)
	e.uint(tagFwdBytes, r.Fwd.Bytes)
	e.uint(tagRevPackets, r.Rev.Packets)
	e.uint(tagRevBytes, r.Rev.Bytes)
	e.enum(tagVerdict, uint8(r.Verdict), len(verdictNames))
	e.strings(tagPolicyID, r.PolicyIDs, maxShortString, maxPolicyIDs)
	e.strings(tagObligation, r.Obligations, maxString, maxObligations)
	e.string(tagReason, r.Reason, maxString)
	if len(r.Waypoints) > maxWaypoints {
		e.fail(tagWaypoint, "%d values, at most %d", len(r.Waypoints), maxWaypoints)
	}
	for _, w := range r.Waypoints {
		if !w.IsValid() {
			e.fail(tagWaypoint, "invalid address")
		}
		e.addr(tagWaypoint, w)
	}
	e.enum(tagPoT, uint8(r.PoT), len(potNames))
	if len(r.Receipts) > maxReceipts {
		e.fail(tagReceipt, "%d values, at most %d", len(r.Receipts), maxReceipts)
	}
	for _, rc := range r.Receipts {
		if len(rc) == 0 {
			e.fail(tagReceipt, "empty value")
		}
		e.bytes(tagReceipt, rc, maxReceipt)
	}
	e.addr(tagSubject, r.Subject)
	e.string(tagSPIFFEID, r.SPIFFEID, maxSPIFFEID)
	e.enum(tagOutcome, uint8(r.Outcome), len(outcomeNames))
	e.fixed(tagDigest, r.Digest[:])
	e.string(tagTrustDomain, r.TrustDomain, maxString)
	e.uint(tagSerial, r.Serial)
	e.addr(tagParent, r.Parent)
	e.fixed(tagTask, r.Task[:])
	e.uint(tagDepth, uint64(r.Depth))
	e.time(tagNotAfter, r.NotAfter)
	e.string(tagOrigin, r.Origin, maxString)
	if len(r.Evidence) != 0 && len(r.Evidence) != 2 {
		e.fail(tagEvidence, "%d checkpoints, want 2", len(r.Evidence))
	}
	for _, ev := range r.Evidence {
		if len(ev) == 0 {
			e.fail(tagEvidence, "empty value")
		}
		e.bytes(tagEvidence, ev, maxEvidence)
	}
	if len(r.Commitments) > maxCommitments {
		e.fail(tagCommitment, "%d values, at most %d", len(r.Commitments), maxCommitments)
	}
	for i, c := range r.Commitments {
		if err := checkCommitmentName(c.Name); err != nil {
			e.fail(tagCommitment, "%v", err)
		}
		if i > 0 && c.Name <= r.Commitments[i-1].Name {
			e.fail(tagCommitment, "names not in increasing order")
		}
		e.tag(tagCommitment)
		e.b = binary.AppendUvarint(e.b, uint64(len(c.Name)))
		e.b = append(e.b, c.Name...)
		e.b = append(e.b, c.Hash[:]...)
	}
	if e.err != nil {
		return b, e.err
	}
	if err := checkFields(r.Kind, e.seen); err != nil {
		return b, err
	}
	if len(e.b)-start > MaxRecordSize {
		return b, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, len(e.b)-start, MaxRecordSize)
	}
	return e.b, nil
}

func (e *encoder) enum(t int, v uint8, n int) {
	if int(v) >= n {
		e.fail(t, "unknown value %d", v)
		return
	}
	e.uint(t, uint64(v))
}

// checkFields checks the fields present against the kind's allowed and
// required sets, and that a nonce comes exactly with commitments.
func checkFields(k Kind, seen fieldMask) error {
	if extra := seen &^ allowed[k]; extra != 0 {
		return fmt.Errorf("%w: a %s record carries no %s", ErrRecord, k, tagNames[lowestTag(extra)])
	}
	if missing := required[k] &^ seen; missing != 0 {
		return fmt.Errorf("%w: a %s record needs %s", ErrRecord, k, tagNames[lowestTag(missing)])
	}
	if (seen&mask(tagNonce) != 0) != (seen&mask(tagCommitment) != 0) {
		return fmt.Errorf("%w: a nonce comes with commitments, and only with them", ErrRecord)
	}
	return nil
}

func lowestTag(m fieldMask) int {
	for t := 0; t < tagLimit; t++ {
		if m&(1<<t) != 0 {
			return t
		}
	}
	return 0
}

func checkCommitmentName(name string) error {
	if name == "" || len(name) > maxShortString {
		return fmt.Errorf("name of %d bytes, want 1..%d", len(name), maxShortString)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("name %q: only a-z 0-9 _ . -", name)
		}
	}
	return nil
}

// decoder reads fields, refusing anything Encode would not write.
type decoder struct {
	b    []byte
	last int
	seen fieldMask
	err  error
}

func (d *decoder) fail(t int, format string, args ...any) {
	if d.err == nil {
		name := "field"
		if t > 0 && t < tagLimit {
			name = tagNames[t]
		}
		d.err = fmt.Errorf("%w: %s: %s", ErrRecord, name, fmt.Sprintf(format, args...))
	}
}

// uvarint reads a minimal-length varint.
func (d *decoder) uvarint(t int) uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(t, "bad varint")
		return 0
	}
	if n != varintLen(v) {
		d.fail(t, "varint not minimal")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func varintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func (d *decoder) take(t, n int) []byte {
	if n < 0 || len(d.b) < n {
		d.fail(t, "truncated")
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// nonzero reads a varint that, being present, must not be zero.
func (d *decoder) nonzero(t int, max uint64) uint64 {
	v := d.uvarint(t)
	if d.err == nil && (v == 0 || v > max) {
		d.fail(t, "value %d outside 1..%d", v, max)
	}
	return v
}

func (d *decoder) time(t int) time.Time {
	v := d.nonzero(t, 1<<63-1)
	if d.err != nil {
		return time.Time{}
	}
	return time.Unix(0, int64(v)).UTC()
}

func (d *decoder) fixed(t int, dst []byte) {
	v := d.take(t, len(dst))
	if d.err == nil && isZero(v) {
		d.fail(t, "zero value")
	}
	copy(dst, v)
}

func (d *decoder) addr(t int) netip.Addr {
	var b [16]byte
	d.fixed(t, b[:])
	a := netip.AddrFrom16(b)
	if d.err == nil && a.Is4In6() {
		d.fail(t, "IPv4-mapped address")
	}
	return a
}

func (d *decoder) bytes(t, max int) []byte {
	n := d.uvarint(t)
	if d.err == nil && (n == 0 || n > uint64(max)) {
		d.fail(t, "length %d outside 1..%d", n, max)
		return nil
	}
	return d.take(t, int(n))
}

func (d *decoder) string(t, max int) string {
	v := d.bytes(t, max)
	if d.err != nil {
		return ""
	}
	if err := checkString(string(v), max); err != nil {
		d.fail(t, "%v", err)
	}
	return string(v)
}

// Decode parses a record, refusing one that is not in canonical form
// (ErrRecord), of another version (ErrVersion) or too large (ErrTooLarge).
// The record it returns shares no memory with b.
func Decode(b []byte) (Record, error) {
	var r Record
	if len(b) > MaxRecordSize {
		return r, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(b))
	}
	if len(b) < 2 {
		return r, fmt.Errorf("%w: %d bytes", ErrRecord, len(b))
	}
	if b[0] != RecordVersion {
		return r, fmt.Errorf("%w: %d", ErrVersion, b[0])
	}
	r.Kind = Kind(b[1])
	if !r.Kind.valid() {
		return r, fmt.Errorf("%w: unknown kind %d", ErrRecord, b[1])
	}
	b = bytes.Clone(b[2:])
	d := decoder{b: b}
	for len(d.b) > 0 && d.err == nil {
		t := int(d.b[0])
		d.b = d.b[1:]
		repeat := t == d.last && (t == tagPolicyID || t == tagObligation || t == tagWaypoint ||
			t == tagReceipt || t == tagEvidence || t == tagCommitment)
		if t == 0 || t >= tagLimit || (t <= d.last && !repeat) {
			d.fail(0, "tag %d after tag %d", t, d.last)
			break
		}
		d.last = t
		d.seen |= 1 << t
		d.field(&r, t)
	}
	if d.err == nil && len(r.Evidence) == 1 {
		d.fail(tagEvidence, "1 checkpoint, want 2")
	}
	if d.err != nil {
		return Record{}, d.err
	}
	if err := checkFields(r.Kind, d.seen); err != nil {
		return Record{}, err
	}
	return r, nil
}

func (d *decoder) field(r *Record, t int) {
	switch t {
	case tagTime:
		r.Time = d.time(t)
	case tagTrace:
		d.fixed(t, r.Trace[:])
	case tagNonce:
		d.fixed(t, r.Nonce[:])
	case tagSrc:
		r.Src = d.addr(t)
	case tagDst:
		r.Dst = d.addr(t)
	case tagSrcTask:
		d.fixed(t, r.SrcTask[:])
	case tagDstTask:
		d.fixed(t, r.DstTask[:])
	case tagProto:
		r.Proto = uint8(d.nonzero(t, 255))
	case tagSrcPort:
		r.SrcPort = uint16(d.nonzero(t, 65535))
	case tagDstPort:
		r.DstPort = uint16(d.nonzero(t, 65535))
	case tagRole:
		r.Role = Role(d.nonzero(t, uint64(len(roleNames)-1)))
	case tagStart:
		r.Start = d.time(t)
	case tagEnd:
		r.End = d.time(t)
	case tagEndReason:
		r.EndReason = EndReason(d.nonzero(t, uint64(len(endReasonNames)-1)))
	case tagFwdPackets:
		r.Fwd.Packets = d.nonzero(t, 1<<64-1)
	case tagFwdBytes:
		r.Fwd.Bytes = d.nonzero(t, 1<<64-1)
	case tagRevPackets:
		r.Rev.Packets = d.nonzero(t, 1<<64-1)
	case tagRevBytes:
		r.Rev.Bytes = d.nonzero(t, 1<<64-1)
	case tagVerdict:
		r.Verdict = Verdict(d.nonzero(t, uint64(len(verdictNames)-1)))
	case tagPolicyID:
		r.PolicyIDs = d.appendString(t, r.PolicyIDs, maxShortString, maxPolicyIDs)
	case tagObligation:
		r.Obligations = d.appendString(t, r.Obligations, maxString, maxObligations)
	case tagReason:
		r.Reason = d.string(t, maxString)
	case tagWaypoint:
		if len(r.Waypoints) == maxWaypoints {
			d.fail(t, "more than %d values", maxWaypoints)
			return
		}
		r.Waypoints = append(r.Waypoints, d.addr(t))
	case tagPoT:
		r.PoT = PoT(d.nonzero(t, uint64(len(potNames)-1)))
	case tagReceipt:
		if len(r.Receipts) == maxReceipts {
			d.fail(t, "more than %d values", maxReceipts)
			return
		}
		r.Receipts = append(r.Receipts, d.bytes(t, maxReceipt))
	case tagSubject:
		r.Subject = d.addr(t)
	case tagSPIFFEID:
		r.SPIFFEID = d.string(t, maxSPIFFEID)
	case tagOutcome:
		r.Outcome = Outcome(d.nonzero(t, uint64(len(outcomeNames)-1)))
	case tagDigest:
		d.fixed(t, r.Digest[:])
	case tagTrustDomain:
		r.TrustDomain = d.string(t, maxString)
	case tagSerial:
		r.Serial = d.nonzero(t, 1<<64-1)
	case tagParent:
		r.Parent = d.addr(t)
	case tagTask:
		d.fixed(t, r.Task[:])
	case tagDepth:
		r.Depth = uint8(d.nonzero(t, 255))
	case tagNotAfter:
		r.NotAfter = d.time(t)
	case tagOrigin:
		r.Origin = d.string(t, maxString)
	case tagEvidence:
		if len(r.Evidence) == 2 {
			d.fail(t, "more than 2 checkpoints")
			return
		}
		r.Evidence = append(r.Evidence, d.bytes(t, maxEvidence))
	case tagCommitment:
		if len(r.Commitments) == maxCommitments {
			d.fail(t, "more than %d values", maxCommitments)
			return
		}
		name := d.string(t, maxShortString)
		var c Commitment
		copy(c.Hash[:], d.take(t, 32))
		if d.err != nil {
			return
		}
		if err := checkCommitmentName(name); err != nil {
			d.fail(t, "%v", err)
			return
		}
		if n := len(r.Commitments); n > 0 && name <= r.Commitments[n-1].Name {
			d.fail(t, "names not in increasing order")
			return
		}
		c.Name = name
		r.Commitments = append(r.Commitments, c)
	}
}

func (d *decoder) appendString(t int, ss []string, max, count int) []string {
	if len(ss) == count {
		d.fail(t, "more than %d values", count)
		return ss
	}
	return append(ss, d.string(t, max))
}

// Equal reports whether r and o encode alike.
func (r *Record) Equal(o *Record) bool {
	a, errA := r.Encode()
	b, errB := o.Encode()
	return errA == nil && errB == nil && bytes.Equal(a, b)
}

// clone returns a deep copy of r.
func (r Record) clone() Record {
	r.PolicyIDs = slices.Clone(r.PolicyIDs)
	r.Obligations = slices.Clone(r.Obligations)
	r.Waypoints = slices.Clone(r.Waypoints)
	r.Receipts = cloneBytes(r.Receipts)
	r.Evidence = cloneBytes(r.Evidence)
	r.Commitments = slices.Clone(r.Commitments)
	return r
}

func cloneBytes(bb [][]byte) [][]byte {
	if bb == nil {
		return nil
	}
	out := make([][]byte, len(bb))
	for i, b := range bb {
		out[i] = bytes.Clone(b)
	}
	return out
}
