package membership

import (
	"errors"
	"fmt"
)

// Reason names why a record, meta, token or message was refused. Each has
// its own counter (Stats) and metric label.
type Reason string

// Refusal reasons.
const (
	ReasonMalformed       Reason = "malformed"        // does not parse
	ReasonBadSignature    Reason = "bad_signature"    // signature does not verify
	ReasonAddrMismatch    Reason = "address_mismatch" // address not derived from the key
	ReasonKeyMismatch     Reason = "key_mismatch"     // credential is for another key
	ReasonUntrusted       Reason = "untrusted"        // credential does not chain to the bundle
	ReasonExpired         Reason = "expired"          // credential expired or not yet valid
	ReasonBadCredential   Reason = "bad_credential"   // credential malformed or misused
	ReasonRevoked         Reason = "revoked"          // credential revoked
	ReasonStale           Reason = "stale"            // older sequence number than one held
	ReasonAddrConflict    Reason = "address_conflict" // another key holds the address
	ReasonOverload        Reason = "overload"         // control queue full
	ReasonBadRevocation   Reason = "bad_revocation"   // revocation not signed by a bundle CA
	ReasonUnknownResponse Reason = "unknown_response" // an ACK that answers no HELLO this node sent
	ReasonReplay          Reason = "replay"           // a signed frame whose timestamp is not fresh, or seen before
	ReasonRateLimited     Reason = "rate_limited"     // a source over its rate, refused before any signature check
	ReasonTaskLimit       Reason = "task_limit"       // a peer's delegation beyond its allowance of tasks
	ReasonTaskDisplaced   Reason = "task_displaced"   // a peer's task dropped: an agent was admitted at its address
	ReasonNotPeer         Reason = "not_peer"         // a peer frame from an address that is no admitted agent
	ReasonForeign         Reason = "misdirected"      // a signed frame addressed to another node
)

// RefusedError is a refusal with its reason.
type RefusedError struct {
	Reason Reason
	Err    error
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("membership: refused (%s): %v", e.Reason, e.Err)
}
func (e *RefusedError) Unwrap() error { return e.Err }

func refusal(r Reason, err error) error { return &RefusedError{Reason: r, Err: err} }

// reasonOf returns the refusal reason of err, or ReasonMalformed.
func reasonOf(err error) Reason {
	var re *RefusedError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ReasonMalformed
}

// Errors callers branch on.
var (
	// ErrBadToken reports a join token that does not parse.
	ErrBadToken = errors.New("membership: bad join token")
	// ErrJoin reports that no join token led to the cluster.
	ErrJoin = errors.New("membership: could not join through any token")
	// ErrRevoked reports that this node's own credential is revoked: its
	// peers refuse it, and it has stopped trying to join.
	ErrRevoked = errors.New("membership: this node's credential is revoked")
)
