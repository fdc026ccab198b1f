package audit

import (
	"fmt"
	"net/netip"
	"time"
)

// RecordVersion is the first byte of every encoded record. A reader refuses
// any other value (ErrVersion); a change to the layout gets a new version.
const RecordVersion = 1

// MaxRecordSize bounds an encoded record: the largest entry C2SP tlog-tiles
// can carry (its entry bundles prefix each entry with a 16-bit length).
const MaxRecordSize = 1<<16 - 1

// Bounds on repeated and variable-length fields (docs/audit.md).
const (
	maxPolicyIDs   = 16
	maxObligations = 16
	maxWaypoints   = 8
	maxReceipts    = 8
	maxReceipt     = 1024
	maxCommitments = 16
	maxShortString = 128 // policy ids, commitment names
	maxString      = 256 // obligations, reasons, trust domains, origins
	maxSPIFFEID    = 512
	maxEvidence    = 4096 // one checkpoint, signatures and all
)

// Kind says what a record describes. Values are part of the format.
type Kind uint8

// Record kinds.
const (
	// KindFlowStart: a new flow and the policy decision on its first packet
	// (at Level full, or whenever the decision is deny).
	KindFlowStart Kind = 1
	// KindFlowEnd: a flow ended; its counters, end reason and path results.
	KindFlowEnd Kind = 2
	// KindAdmission: an agent admitted to membership or refused.
	KindAdmission Kind = 3
	// KindRevocation: a credential revocation applied.
	KindRevocation Kind = 4
	// KindPolicy: a policy document applied (or refused).
	KindPolicy Kind = 5
	// KindDelegation: a delegation issued by this node or accepted from a peer.
	KindDelegation Kind = 6
	// KindEvidence: this node, as a witness, found a log that forked or
	// rolled back; the record carries both checkpoints.
	KindEvidence Kind = 7
)

var kindNames = [...]string{
	KindFlowStart: "flow_start", KindFlowEnd: "flow_end", KindAdmission: "admission",
	KindRevocation: "revocation", KindPolicy: "policy", KindDelegation: "delegation",
	KindEvidence: "evidence",
}

func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

func (k Kind) valid() bool { return k >= KindFlowStart && k <= KindEvidence }

// Role is the recording node's place in a flow.
type Role uint8

// Roles.
const (
	RoleSource      Role = 1
	RoleDestination Role = 2
	RoleWaypoint    Role = 3
)

// EndReason says why a flow ended.
type EndReason uint8

// End reasons.
const (
	EndFIN       EndReason = 1 // TCP closed both ways
	EndRST       EndReason = 2 // TCP reset
	EndIdle      EndReason = 3 // no packet for the idle timeout
	EndDenied    EndReason = 4 // a policy change revoked the flow
	EndTaskEnded EndReason = 5 // its task ended
	EndShutdown  EndReason = 6 // the node stopped
	EndEvicted   EndReason = 7 // the flow table was full
)

// Verdict is a policy decision.
type Verdict uint8

// Verdicts.
const (
	VerdictAllow Verdict = 1
	VerdictDeny  Verdict = 2
)

// PoT is the result of proof-of-transit for a waypointed flow.
type PoT uint8

// Proof-of-transit results (zero: no waypoint was required).
const (
	PoTVerified PoT = 1 // every waypoint's receipt verified
	PoTFailed   PoT = 2 // a receipt did not verify
	PoTMissing  PoT = 3 // a waypoint gave no receipt, or the path skipped it
)

// Outcome is what happened to an agent, credential, document or delegation.
type Outcome uint8

// Outcomes.
const (
	OutcomeAdmitted Outcome = 1
	OutcomeRefused  Outcome = 2
	OutcomeApplied  Outcome = 3
	OutcomeIssued   Outcome = 4
	OutcomeAccepted Outcome = 5
)

var (
	roleNames      = [...]string{"", "source", "destination", "waypoint"}
	endReasonNames = [...]string{"", "fin", "rst", "idle", "denied", "task_ended", "shutdown", "evicted"}
	verdictNames   = [...]string{"", "allow", "deny"}
	potNames       = [...]string{"", "verified", "failed", "missing"}
	outcomeNames   = [...]string{"", "admitted", "refused", "applied", "issued", "accepted"}
)

func (r Role) String() string      { return enumName(roleNames[:], uint8(r)) }
func (e EndReason) String() string { return enumName(endReasonNames[:], uint8(e)) }
func (v Verdict) String() string   { return enumName(verdictNames[:], uint8(v)) }
func (p PoT) String() string       { return enumName(potNames[:], uint8(p)) }
func (o Outcome) String() string   { return enumName(outcomeNames[:], uint8(o)) }

func enumName(names []string, v uint8) string {
	if int(v) < len(names) && names[v] != "" {
		return names[v]
	}
	if v == 0 {
		return ""
	}
	return fmt.Sprintf("%d", v)
}

// Counters are one direction's packets and bytes.
type Counters struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Commitment binds a record to a value it does not carry: SHA-256 over
// salt || value, with a salt derived from the log's secret, the record's
// nonce and the commitment's name (Log.Disclose gives it out for one
// record; Open checks it).
type Commitment struct {
	Name string   `json:"name"`
	Hash [32]byte `json:"hash"`
}

// Record is one audit log entry: metadata about a flow or a membership,
// policy or delegation event, never content. Which fields a record may
// carry depends on its Kind (docs/audit.md lists them); Encode refuses the
// others. Zero values are absent fields. Times are kept to the nanosecond,
// in UTC.
type Record struct {
	Kind  Kind      // required
	Time  time.Time // when it happened (required; for a flow end, the end)
	Trace TraceID   // the task's trace, if any
	// Nonce makes the record's commitment salts unique; it is set by
	// Log.Commit and present exactly when Commitments are.
	Nonce [16]byte

	// Flows (KindFlowStart, KindFlowEnd).
	Src, Dst         netip.Addr // the agents' (or tasks') overlay addresses
	SrcTask, DstTask Pseudonym  // task pseudonyms, when a task's address is in play
	Proto            uint8      // IP protocol number (6 TCP, 17 UDP, 58 ICMPv6)
	SrcPort, DstPort uint16
	Role             Role
	Start, End       time.Time
	EndReason        EndReason
	Fwd, Rev         Counters // Src→Dst and Dst→Src

	// Decisions (flows).
	Verdict     Verdict
	PolicyIDs   []string // the deciding policies' ids
	Obligations []string // "name=value", e.g. "log=full", "via=2001:21:…"
	Reason      string   // why: a deny reason, a refusal reason, "fork"

	// Paths (flows).
	Waypoints []netip.Addr
	PoT       PoT
	Receipts  [][]byte // waypoints' signed receipts, opaque here

	// Agents, credentials, documents, delegations.
	Subject     netip.Addr // the agent admitted or refused; a delegation's child
	SPIFFEID    string
	Outcome     Outcome
	Digest      [32]byte // SHA-256 of the revoked certificate, the policy document or the delegation record
	TrustDomain string
	Serial      uint64 // a policy document's serial
	Parent      netip.Addr
	Task        Pseudonym // a delegation's task pseudonym
	Depth       uint8
	NotAfter    time.Time

	// Evidence (KindEvidence).
	Origin   string   // the misbehaving log's origin
	Evidence [][]byte // its two checkpoints, the one cosigned first

	Commitments []Commitment
}
