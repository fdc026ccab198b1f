package identity

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// MaxDelegationDepth bounds delegation chains: an agent's task has depth 1,
// a sub-agent of that task depth 2, and so on.
const MaxDelegationDepth = 4

// delegationVersion is the Delegation payload version. Version 1 had no
// trace id and travelled without the child's acceptance; it is refused.
const delegationVersion = 2

// Budget limits what a delegated identity may do. Zero means no limit.
type Budget struct {
	Rate   float64 `json:"rate,omitempty"`    // new flows per second
	Bytes  uint64  `json:"bytes,omitempty"`   // bytes in all
	FanOut int     `json:"fan_out,omitempty"` // distinct peers
}

// TraceID names the work a task belongs to across agents and trust
// domains: 16 bytes, the trace-id of W3C trace context. A task's
// sub-agents inherit it; it is pseudonymous (random unless the program
// passes its own). The zero value means none.
type TraceID [16]byte

// IsZero reports whether t is the zero (absent) trace id.
func (t TraceID) IsZero() bool { return t == TraceID{} }

// String returns t as 32 lowercase hex digits, as W3C trace context writes it.
func (t TraceID) String() string { return hex.EncodeToString(t[:]) }

// MarshalText implements encoding.TextMarshaler.
func (t TraceID) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler: 32 lowercase hex
// digits.
func (t *TraceID) UnmarshalText(b []byte) error {
	id, err := ParseTraceID(string(b))
	if err != nil {
		return err
	}
	*t = id
	return nil
}

// ParseTraceID parses 32 lowercase hex digits.
func ParseTraceID(s string) (TraceID, error) {
	var t TraceID
	if len(s) != 2*len(t) || s != string(bytes.ToLower([]byte(s))) {
		return TraceID{}, fmt.Errorf("%w: trace id %q is not 32 lowercase hex digits", ErrBadRecord, s)
	}
	if _, err := hex.Decode(t[:], []byte(s)); err != nil {
		return TraceID{}, fmt.Errorf("%w: trace id %q is not 32 lowercase hex digits", ErrBadRecord, s)
	}
	return t, nil
}

// Delegation binds a child key (a task or sub-agent) to the key that
// delegated to it, within an agent's authority. It is signed by Parent, the
// agent itself (Depth 1) or a task of it (deeper), and accepted by Child
// (see Link): nobody can delegate to a key they do not hold. It carries the
// task's pseudonym and trace id, never its content.
type Delegation struct {
	Child       PublicKey `json:"child"`
	Parent      PublicKey `json:"parent"`
	Owner       PublicKey `json:"owner"` // the agent at the root of the chain
	Class       string    `json:"class,omitempty"`
	Sensitivity string    `json:"sensitivity,omitempty"`
	Scope       []string  `json:"scope,omitempty"`
	Budget      Budget    `json:"budget"`
	Depth       int       `json:"depth"`
	NotAfter    time.Time `json:"not_after"`
	Pseudonym   string    `json:"pseudonym"`
	TraceID     TraceID   `json:"trace_id"`
}

type delegationPayload struct {
	V int `json:"v"`
	Delegation
}

// ChildAddr returns the delegated identity's address.
func (d *Delegation) ChildAddr() netip.Addr { a, _ := d.Child.Addr(); return a }

// SignDelegation signs d with parent, which must hold d.Parent. The record
// is half a delegation: a verifier also wants the child's acceptance of it
// (Accept; Delegate makes both).
func SignDelegation(parent PrivateKey, d Delegation) (SignedRecord, error) {
	if !parent.Public().Equal(d.Parent) {
		return SignedRecord{}, fmt.Errorf("%w: delegation must be signed by its parent", ErrBadRecord)
	}
	if err := d.check(); err != nil {
		return SignedRecord{}, err
	}
	payload, err := json.Marshal(delegationPayload{V: delegationVersion, Delegation: d})
	if err != nil {
		return SignedRecord{}, err
	}
	return SignRecord(parent, RecordDelegation, payload)
}

// acceptanceVersion is the Acceptance payload version.
const acceptanceVersion = 1

// Accept returns child's acceptance of the delegation record rec: a record
// of type RecordAcceptance signed by child whose payload is
// version(1)=1 | SHA-256 of rec's encoding, so it binds the parent's
// signature too. It proves that the holder of the child key took the
// delegation: without it, anyone could name any key (an agent's, this
// node's) as their task and claim its address.
func Accept(child PrivateKey, rec SignedRecord) (SignedRecord, error) {
	sum := sha256.Sum256(rec.Marshal())
	return SignRecord(child, RecordAcceptance, append([]byte{acceptanceVersion}, sum[:]...))
}

// Link is one link of a delegation chain: the delegation, signed by the
// parent, and the child's acceptance of it. Its encoding is the two
// SignedRecord encodings one after the other.
type Link struct {
	Record     SignedRecord // type RecordDelegation, signed by the parent
	Acceptance SignedRecord // type RecordAcceptance, signed by the child
}

// Delegate signs d as parent and accepts it as child: a complete link.
func Delegate(parent, child PrivateKey, d Delegation) (Link, error) {
	if !child.Public().Equal(d.Child) {
		return Link{}, fmt.Errorf("%w: delegation must be accepted by its child", ErrBadRecord)
	}
	rec, err := SignDelegation(parent, d)
	if err != nil {
		return Link{}, err
	}
	acc, err := Accept(child, rec)
	if err != nil {
		return Link{}, err
	}
	return Link{Record: rec, Acceptance: acc}, nil
}

// Marshal encodes the link.
func (l Link) Marshal() []byte { return append(l.Record.Marshal(), l.Acceptance.Marshal()...) }

// ParseLink decodes the first link in b, verifies both signatures and the
// delegation's fields, and returns it with the bytes that follow it.
// Whether the chain leads to an admitted agent, whether it has expired
// and whether it narrows its parent (Within) are the caller's questions.
func ParseLink(b []byte) (*Delegation, []byte, error) {
	rec, rest, err := splitRecord(b)
	if err != nil {
		return nil, nil, err
	}
	acc, rest, err := splitRecord(rest)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: delegation without its acceptance: %v", ErrBadRecord, err)
	}
	// Cheap checks before any signature: types, and that the acceptance
	// names these bytes.
	if rec.Type != RecordDelegation || acc.Type != RecordAcceptance {
		return nil, nil, fmt.Errorf("%w: link of %s and %s records, want delegation and acceptance", ErrBadRecord, rec.Type, acc.Type)
	}
	sum := sha256.Sum256(rec.Marshal())
	if len(acc.Payload) != 1+len(sum) || acc.Payload[0] != acceptanceVersion || !bytes.Equal(acc.Payload[1:], sum[:]) {
		return nil, nil, fmt.Errorf("%w: acceptance is not of this delegation", ErrBadRecord)
	}
	d, err := decodeDelegation(rec)
	if err != nil {
		return nil, nil, err
	}
	if !acc.Signer.Equal(d.Child) {
		return nil, nil, fmt.Errorf("%w: delegation to %s accepted by %s, not by its child", ErrBadRecord, d.Child, acc.Signer)
	}
	if err := rec.Verify(); err != nil {
		return nil, nil, err
	}
	if err := acc.Verify(); err != nil {
		return nil, nil, fmt.Errorf("%w: child's acceptance does not verify", ErrBadRecord)
	}
	return d, rest, nil
}

// splitRecord decodes the SignedRecord at the start of b, without
// verifying it, and returns the bytes after it.
func splitRecord(b []byte) (SignedRecord, []byte, error) {
	if len(b) < recordOverhead {
		return SignedRecord{}, nil, fmt.Errorf("%w: %d bytes is too short", ErrBadRecord, len(b))
	}
	n := recordOverhead + (int(b[34])<<8 | int(b[35]))
	if n > len(b) {
		return SignedRecord{}, nil, fmt.Errorf("%w: record of %d bytes in %d", ErrBadRecord, n, len(b))
	}
	r, err := DecodeSignedRecord(b[:n:n])
	return r, b[n:], err
}

// ParseDelegation decodes a delegation record whose signature has been
// verified (ParseSignedRecord does that), checking that its signer is its
// parent and that its fields are well-formed. It does not check the
// child's acceptance: ParseLink does.
func ParseDelegation(rec SignedRecord) (*Delegation, error) {
	if rec.Type != RecordDelegation {
		return nil, fmt.Errorf("%w: %s record, want delegation", ErrBadRecord, rec.Type)
	}
	return decodeDelegation(rec)
}

func decodeDelegation(rec SignedRecord) (*Delegation, error) {
	var p delegationPayload
	dec := json.NewDecoder(bytes.NewReader(rec.Payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%w: delegation: %v", ErrBadRecord, err)
	}
	if p.V != delegationVersion {
		return nil, fmt.Errorf("%w: delegation version %d, want %d", ErrBadRecord, p.V, delegationVersion)
	}
	d := p.Delegation
	if !rec.Signer.Equal(d.Parent) {
		return nil, fmt.Errorf("%w: delegation signed by %s, not by its parent %s", ErrBadRecord, rec.Signer, d.Parent)
	}
	if err := d.check(); err != nil {
		return nil, err
	}
	return &d, nil
}

func (d *Delegation) check() error {
	switch {
	case d.Child.IsZero() || d.Parent.IsZero() || d.Owner.IsZero():
		return fmt.Errorf("%w: delegation needs child, parent and owner keys", ErrBadRecord)
	case d.Child.Equal(d.Parent) || d.Child.Equal(d.Owner):
		return fmt.Errorf("%w: delegation to its own parent or owner", ErrBadRecord)
	case d.Depth < 1 || d.Depth > MaxDelegationDepth:
		return fmt.Errorf("%w: delegation depth %d outside 1..%d", ErrBadRecord, d.Depth, MaxDelegationDepth)
	case d.Depth == 1 && !d.Parent.Equal(d.Owner):
		return fmt.Errorf("%w: a depth-1 delegation must be signed by its owner", ErrBadRecord)
	case d.NotAfter.IsZero():
		return fmt.Errorf("%w: delegation without expiry", ErrBadRecord)
	case len(d.Class) > 64 || len(d.Sensitivity) > 64 || len(d.Scope) > 32 || len(d.Pseudonym) > 64:
		return fmt.Errorf("%w: delegation field too long", ErrBadRecord)
	case d.Budget.Rate < 0 || d.Budget.FanOut < 0:
		return fmt.Errorf("%w: negative budget", ErrBadRecord)
	}
	for _, s := range d.Scope {
		if len(s) > 256 {
			return fmt.Errorf("%w: delegation scope entry of %d bytes", ErrBadRecord, len(s))
		}
	}
	if _, err := d.Child.WireGuard(); err != nil {
		return fmt.Errorf("%w: child key: %v", ErrBadRecord, err)
	}
	return nil
}

// Within reports, as an error, how d reaches beyond parent, the
// delegation one level up: a child may not outlive its parent, reach
// what its parent may not (scope: every entry of a child's scope is one
// of its parent's, and a parent with a scope has children with one), spend
// more than it (each budget a parent limits, its child limits at most as
// much), or change the trace it belongs to.
func (d *Delegation) Within(parent *Delegation) error {
	switch {
	case d.NotAfter.After(parent.NotAfter):
		return fmt.Errorf("%w: delegation expires at %s, after its parent (%s)", ErrBadRecord, d.NotAfter.Format(time.RFC3339), parent.NotAfter.Format(time.RFC3339))
	case d.TraceID != parent.TraceID:
		return fmt.Errorf("%w: delegation of trace %s under a parent of trace %s", ErrBadRecord, d.TraceID, parent.TraceID)
	case len(parent.Scope) > 0 && len(d.Scope) == 0:
		return fmt.Errorf("%w: unscoped delegation under a scoped parent", ErrBadRecord)
	}
	for _, s := range d.Scope {
		if len(parent.Scope) > 0 && !slices.Contains(parent.Scope, s) {
			return fmt.Errorf("%w: scope %q is not in its parent's scope", ErrBadRecord, s)
		}
	}
	return d.Budget.Within(parent.Budget)
}

// Within reports, as an error, a limit of b that is wider than p's: each
// limit p sets (non-zero), b sets too, no higher.
func (b Budget) Within(p Budget) error {
	switch {
	case p.Rate > 0 && (b.Rate == 0 || b.Rate > p.Rate):
		return fmt.Errorf("%w: rate budget %g beyond its parent's %g", ErrBadRecord, b.Rate, p.Rate)
	case p.Bytes > 0 && (b.Bytes == 0 || b.Bytes > p.Bytes):
		return fmt.Errorf("%w: bytes budget %d beyond its parent's %d", ErrBadRecord, b.Bytes, p.Bytes)
	case p.FanOut > 0 && (b.FanOut == 0 || b.FanOut > p.FanOut):
		return fmt.Errorf("%w: fan-out budget %d beyond its parent's %d", ErrBadRecord, b.FanOut, p.FanOut)
	}
	return nil
}

// TaskPseudonym returns the pseudonym of the task named id: an HMAC of id
// under a secret derived from k. It is stable for the agent, unlinkable to
// id without k, and reveals nothing of the task's content.
func (k PrivateKey) TaskPseudonym(id string) string {
	secret := sha256.Sum256(append([]byte("agent6 task pseudonym v1\x00"), k.seed[:]...))
	mac := hmac.New(sha256.New, secret[:])
	mac.Write([]byte(id))
	return hex.EncodeToString(mac.Sum(nil)[:16])
}
