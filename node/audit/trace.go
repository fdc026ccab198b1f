package audit

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
)

// TraceID names one task across every agent, node and trust domain it
// touches: 16 bytes, the W3C trace-context trace-id, so a program that
// already traces with OpenTelemetry passes its own. It is pseudonymous:
// random, and tied to nothing but the records that carry it. Sub-agents
// inherit their task's trace id through delegation. The zero value means
// "no trace" (W3C forbids the all-zero id).
type TraceID [16]byte

// NewTraceID returns a random trace id.
func NewTraceID() TraceID {
	var t TraceID
	for t.IsZero() {
		if _, err := rand.Read(t[:]); err != nil {
			panic("audit: crypto/rand failed: " + err.Error()) // crypto/rand never fails on supported platforms
		}
	}
	return t
}

// ParseTraceID parses 32 lowercase hex digits, as W3C trace-context writes
// a trace-id. The all-zero id is refused.
func ParseTraceID(s string) (TraceID, error) {
	var t TraceID
	if len(s) != 32 || strings.ToLower(s) != s {
		return t, fmt.Errorf("audit: trace id %q: want 32 lowercase hex digits", s)
	}
	if _, err := hex.Decode(t[:], []byte(s)); err != nil {
		return TraceID{}, fmt.Errorf("audit: trace id %q: %v", s, err)
	}
	if t.IsZero() {
		return TraceID{}, fmt.Errorf("audit: trace id is all zeros")
	}
	return t, nil
}

// ParseTraceParent extracts the trace id of a W3C traceparent header value,
// "00-<trace-id>-<parent-id>-<flags>". Versions other than 00 are read as
// the specification asks: the first four fields, whatever follows.
func ParseTraceParent(s string) (TraceID, error) {
	parts := strings.SplitN(s, "-", 5)
	if len(parts) < 4 || len(parts[0]) != 2 || parts[0] == "ff" ||
		len(parts[2]) != 16 || len(parts[3]) != 2 || (parts[0] == "00" && len(parts) != 4) {
		return TraceID{}, fmt.Errorf("audit: traceparent %q is malformed", s)
	}
	return ParseTraceID(parts[1])
}

// IsZero reports whether t is the zero value (no trace).
func (t TraceID) IsZero() bool { return t == TraceID{} }

// String returns t as 32 lowercase hex digits.
func (t TraceID) String() string { return hex.EncodeToString(t[:]) }

// MarshalText implements encoding.TextMarshaler.
func (t TraceID) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (t *TraceID) UnmarshalText(b []byte) error {
	v, err := ParseTraceID(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// Pseudonym is a task pseudonym as identity.PrivateKey.TaskPseudonym makes
// it: 16 bytes of an HMAC of the task id, written as 32 hex digits.
type Pseudonym [16]byte

// ParsePseudonym parses a pseudonym's 32 hex digits.
func ParsePseudonym(s string) (Pseudonym, error) {
	var p Pseudonym
	if len(s) != 32 {
		return p, fmt.Errorf("audit: pseudonym %q: want 32 hex digits", s)
	}
	if _, err := hex.Decode(p[:], []byte(s)); err != nil {
		return Pseudonym{}, fmt.Errorf("audit: pseudonym %q: %v", s, err)
	}
	return p, nil
}

// IsZero reports whether p is the zero value (no task).
func (p Pseudonym) IsZero() bool { return p == Pseudonym{} }

// String returns p as 32 lowercase hex digits.
func (p Pseudonym) String() string { return hex.EncodeToString(p[:]) }

// MarshalText implements encoding.TextMarshaler.
func (p Pseudonym) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Pseudonym) UnmarshalText(b []byte) error {
	v, err := ParsePseudonym(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}
