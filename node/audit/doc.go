// Package audit is a node's verifiable audit log: an append-only Merkle
// tree of flow and event records kept with Tessera (C2SP tlog-tiles),
// whose checkpoints are C2SP signed notes signed by the node's own Ed25519
// key, served over the tlog-tiles HTTP API, and cosigned by witnesses in
// other trust domains (C2SP tlog-cosignature) who catch a log that forks
// or rolls back. docs/audit.md describes the record format field by field
// and the design; this comment is the API.
//
// # The log
//
//	l, err := audit.Open(ctx, audit.Config{
//		Key:         key,                          // identity.PrivateKey: signs checkpoints
//		TrustDomain: "example.org",                // in the origin
//		Storage:     audit.POSIX(dir + "/audit"),  // nil: audit.Memory(0), not durable
//	})
//	defer l.Close()
//
// The origin is "<trust-domain>/agent6/audit/<address>" (Origin). Storage
// is a configuration: POSIX (Tessera's POSIX driver) and Memory (an
// in-memory Tessera driver of this package) ship; another Tessera driver
// is another Storage.
//
// Records are metadata only (Record; one canonical binary encoding,
// versioned, refused unless canonical). A value beyond metadata enters a
// record only as a salted commitment (Log.Commit), which the node can open
// for one record on request (Log.Disclose, Commitment.Open).
//
// # What phase 2 calls
//
// The packet filter, at a flow's end (its OnFlowEnd hook) and, at Level
// full or on deny, at its first packet: build a Record of KindFlowEnd or
// KindFlowStart, keep it if the deciding policy's Level (ParseLevel of its
// @log obligation) Keeps it, and Submit it. Submit never blocks: a full
// queue drops the record and counts it (Stats.Dropped).
//
// The policy engine (node/policy): its decision fills Verdict, PolicyIDs,
// Obligations and Reason of the flow record; applying a document appends a
// KindPolicy record (Digest, Serial, TrustDomain, Outcome).
//
// Membership: admissions and refusals (KindAdmission), revocations
// (KindRevocation), delegations issued and accepted (KindDelegation, with
// the delegation's TraceID) — rare events, appended with Append, which
// returns once the record is integrated and durable.
//
// Tasks carry a TraceID (W3C trace-context trace-id; NewTraceID, or
// ParseTraceParent of the program's own); every record of the task carries
// it, and Log.Trace returns them with inclusion proofs.
//
// # Serving, gossip, witnessing
//
// Port 7948 of the overlay address serves Log.Handler, authorised per
// caller by an Authorizer (phase 2: the policy's audit action; without a
// policy document, agents of the node's trust domain). The LocalAPI mounts
// the same handler with AllowAll, and streams Log.Subscribe as NDJSON for
// GET /v1/flows?follow=1.
//
// Config.OnCheckpoint hands each new checkpoint (a few hundred bytes) to
// gossip, as an identity.RecordCheckpoint. A peer whose Witness follows
// the log (Witness.AddLog with the log's VerifierKey) calls
// Witness.CosignFrom with an HTTPFetcher on the node's port 7948, and
// gossips the cosignature line it returns; the node takes it with
// Log.AddCosignature (accepting only keys given to Log.SetWitnesses) and
// serves its checkpoint with it. A fork or rollback is refused with a
// *MisbehaviourError whose Evidence (both checkpoints) the witness appends
// to its own log (Evidence.Record) and counts.
//
// Readers verify everything they fetch: FetchProven (inclusion),
// CheckConsistency, VerifyLog and Log.Verify (the whole log, end to end),
// ParseCheckpoint (signatures and cosignatures).
package audit
