package node

import "errors"

// Errors that callers branch on.
var (
	// ErrNotUp reports a call that needs a running node before Up.
	ErrNotUp = errors.New("node: not up")
	// ErrNotOverlay reports an address outside the Agent6 overlay.
	ErrNotOverlay = errors.New("node: address is not an Agent6 overlay address")
	// ErrNotLocal reports a listen address that is not this node's.
	ErrNotLocal = errors.New("node: address is not this node's")
	// ErrUnknownAddr reports an overlay address that no known key holds:
	// WhoIs has no answer, and a Dial fails at once rather than at its
	// deadline.
	ErrUnknownAddr = errors.New("node: no known agent holds this address")
)
