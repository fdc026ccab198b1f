package membership

// State is where a known agent stands with this node:
//
//	pending ──admit──▶ alive ──memberlist: dead──▶ dead ──grace──▶ removed
//	                     ▲  ◀──memberlist: alive──┘                  │
//	                     └──────────── admitted again (HELLO) ◀──────┘
//
// and, from alive or dead, left (it said LEAVE), revoked (a revocation
// matches its credential) or expired (its credential did). An agent is a
// WireGuard peer exactly while it is alive or dead (Admitted).
type State uint8

const (
	// StatePending: its record verified (it was announced, or asked),
	// but it has not been admitted.
	StatePending State = iota + 1
	// StateAlive: admitted, a WireGuard peer.
	StateAlive
	// StateDead: memberlist declared it dead; it stays a WireGuard peer
	// for a grace period, so that a refutation can come through.
	StateDead
	// StateRemoved: dead beyond the grace: no longer a WireGuard peer; it
	// is sent a HELLO now and then in case it was wrongly declared dead.
	StateRemoved
	// StateLeft: it said it was leaving.
	StateLeft
	// StateRevoked: a verified revocation matches its credential.
	StateRevoked
	// StateExpired: its credential expired.
	StateExpired
)

// Admitted reports whether an agent in state s is a WireGuard peer.
func (s State) Admitted() bool { return s == StateAlive || s == StateDead }

// String names s as `agent6 peers` shows it. A removed agent is shown as
// dead: whether its WireGuard peer has gone yet is this node's business.
func (s State) String() string {
	switch s {
	case StatePending:
		return "pending"
	case StateAlive:
		return "alive"
	case StateDead, StateRemoved:
		return "dead"
	case StateLeft:
		return "left"
	case StateRevoked:
		return "revoked"
	case StateExpired:
		return "expired"
	}
	return "unknown"
}
