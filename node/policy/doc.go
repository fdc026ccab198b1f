// Package policy owns authorization in Agent6: signed Cedar policy
// documents, one per trust domain, and the engine that decides with them
// whether one agent (or task) may connect to, discover, or read the audit
// records of another; the scopes and budgets of delegated tasks; and the
// obligations (@rate, @bytes, @fan_out, @log, @via) that permits attach
// to the flows they allow. It depends on nothing of membership or the data
// plane: its inputs are plain values, and docs/policy.md describes the
// model for operators.
//
// # Model
//
// An Agent is Agent::"<address>" in Group::"g", Role::"r" and
// TrustDomain::"td" (from its credential), with attributes spiffe_id,
// trust_domain, skills and tags (from its card). A Task is
// Task::"<address>" in its owner Agent and its ancestor tasks, with class,
// sensitivity, depth and pseudonym. Actions are Action::"connect" (context
// {proto: "tcp"|"udp"|"icmp", port: Long}), Action::"discover" and
// Action::"audit". Every document is validated against that schema.
// Groups and roles belong to their trust domain: a document sees another
// domain td's groups as Group::"td/g" (roles likewise), so a partner's CA
// cannot put its agents in this domain's groups.
//
// A flow needs the sender's trust domain to permit it outbound and the
// receiver's to permit it inbound; inside one domain that is one
// evaluation. A domain without a document keeps the default: allow inside
// the domain, deny across (RuleDefaultSameDomain, RuleDefaultCrossDomain,
// the names node.DefaultPolicy has used).
//
// # Documents
//
// A Document is Cedar text, a tests section (named requests and the
// expected allow or deny), its trust domain and a serial. It travels as an
// identity.SignedRecord of type identity.RecordPolicy signed by a CA of its
// domain (CA.SignPolicy; Bundle.IsCAKey checks it); see Document.Marshal for
// the payload. Verify and Engine.Apply refuse with an *Error naming the
// document, the policy id and line:column, wrapping one sentinel per reason
// (RefusalReason names them for counters); the highest valid serial per
// domain wins and anything else changes nothing.
//
// # Integration (the API the filter and membership call)
//
// Membership turns what it has verified into values: an admitted agent's
// credential and card into an Agent, a delegation into a Task (ParseScope
// its Scope; a delegation whose scope does not parse is refused), and
// answers "who is this address?" with a Party. On every change of what it
// knows (an agent admitted, changed or removed, a task started or ended) it
// calls Engine.Invalidate, and Accounting.Forget for an address that is
// gone. A policy record from gossip or the LocalAPI goes to Engine.Apply;
// an accepted one is gossiped on, a refused one is dropped and counted.
//
// The filter, at the first packet of a new flow, builds a Request
// (principal and resource parties, ActionConnect, proto, destination port)
// and calls
//
//	d := engine.Decide(&req)              // cached per (principal, resource, proto, port, generation)
//	if !d.Allow { refuse: ICMPv6 administratively prohibited; count d.Reason, d.Rule() }
//	charge, err := acct.Admit(&req, &d, policy.Outbound, now)  // or policy.Inbound at the receiver
//	if err != nil { refuse: budget_exceeded (err is a *BudgetError) }
//
// keeps charge, d.Rule() and d.Generation with the flow, and charges its
// bytes with acct.AddBytes(charge, n) each time 64 KiB accrue and at its end
// (false: cut the flow). When Engine.Generation moves past a flow's, the
// sweeper decides the flow again and cuts it if it is no longer allowed.
// Discover asks Decide with ActionDiscover; the audit log's readers with
// ActionAudit. Explain answers "why?" for people.
//
// Decide and Admit are safe for concurrent use and do not block: a cache
// hit costs about 0.1 µs, a miss at 1,000 policies about 12 µs of CPU (the
// index evaluates only the policies whose scopes could match; see
// bench_test.go and bench/RESULTS.md), Admit about 1 µs.
package policy
