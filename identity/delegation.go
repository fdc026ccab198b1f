package identity

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"
)

// MaxDelegationDepth bounds delegation chains: an agent's task has depth 1,
// a sub-agent of that task depth 2, and so on.
const MaxDelegationDepth = 4

// delegationVersion is the Delegation payload version.
const delegationVersion = 1

// Budget limits what a delegated identity may do. Zero means no limit.
type Budget struct {
	Rate   float64 `json:"rate,omitempty"`    // new flows per second
	Bytes  uint64  `json:"bytes,omitempty"`   // bytes in all
	FanOut int     `json:"fan_out,omitempty"` // distinct peers
}

// Delegation binds a child key (a task or sub-agent) to the key that
// delegated to it, within an agent's authority. It is signed by Parent, the
// agent itself (Depth 1) or a task of it (deeper). It carries the task's
// pseudonym, never its content.
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
}

type delegationPayload struct {
	V int `json:"v"`
	Delegation
}

// ChildAddr returns the delegated identity's address.
func (d *Delegation) ChildAddr() netip.Addr { a, _ := d.Child.Addr(); return a }

// SignDelegation signs d with parent, which must hold d.Parent.
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

// ParseDelegation decodes a delegation record whose signature has been
// verified (ParseSignedRecord does that), checking that its signer is its
// parent and that its fields are well-formed. Whether the chain leads to an
// admitted agent, and whether it has expired, is the caller's question.
func ParseDelegation(rec SignedRecord) (*Delegation, error) {
	if rec.Type != RecordDelegation {
		return nil, fmt.Errorf("%w: %s record, want delegation", ErrBadRecord, rec.Type)
	}
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
	if _, err := d.Child.WireGuard(); err != nil {
		return fmt.Errorf("%w: child key: %v", ErrBadRecord, err)
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
