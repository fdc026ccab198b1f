package audit

import (
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"time"
)

// jsonRecord is a Record as JSON shows it: enums by name, ids in hex, times
// in RFC 3339 with nanoseconds, absent fields omitted. It is a view for
// people and tools (the NDJSON flow stream, `agent6 audit trace --json`);
// the log holds the binary encoding.
type jsonRecord struct {
	Kind        string       `json:"kind"`
	Time        time.Time    `json:"time"`
	Trace       string       `json:"trace,omitempty"`
	Nonce       string       `json:"nonce,omitempty"`
	Src         *netip.Addr  `json:"src,omitempty"`
	Dst         *netip.Addr  `json:"dst,omitempty"`
	SrcTask     string       `json:"src_task,omitempty"`
	DstTask     string       `json:"dst_task,omitempty"`
	Proto       uint8        `json:"proto,omitempty"`
	SrcPort     uint16       `json:"src_port,omitempty"`
	DstPort     uint16       `json:"dst_port,omitempty"`
	Role        string       `json:"role,omitempty"`
	Start       *time.Time   `json:"start,omitempty"`
	End         *time.Time   `json:"end,omitempty"`
	EndReason   string       `json:"end_reason,omitempty"`
	Fwd         *Counters    `json:"fwd,omitempty"`
	Rev         *Counters    `json:"rev,omitempty"`
	Verdict     string       `json:"verdict,omitempty"`
	PolicyIDs   []string     `json:"policy_ids,omitempty"`
	Obligations []string     `json:"obligations,omitempty"`
	Reason      string       `json:"reason,omitempty"`
	Waypoints   []netip.Addr `json:"waypoints,omitempty"`
	PoT         string       `json:"pot,omitempty"`
	Receipts    [][]byte     `json:"receipts,omitempty"`
	Subject     *netip.Addr  `json:"subject,omitempty"`
	SPIFFEID    string       `json:"spiffe_id,omitempty"`
	Outcome     string       `json:"outcome,omitempty"`
	Digest      string       `json:"digest,omitempty"`
	TrustDomain string       `json:"trust_domain,omitempty"`
	Serial      uint64       `json:"serial,omitempty"`
	Parent      *netip.Addr  `json:"parent,omitempty"`
	Task        string       `json:"task,omitempty"`
	Depth       uint8        `json:"depth,omitempty"`
	NotAfter    *time.Time   `json:"not_after,omitempty"`
	Origin      string       `json:"origin,omitempty"`
	Evidence    []string     `json:"evidence,omitempty"`
	Commitments []jsonCommit `json:"commitments,omitempty"`
}

type jsonCommit struct {
	Name string `json:"name"`
	Hash string `json:"hash"`
}

// MarshalJSON renders r for people and tools (see jsonRecord).
func (r Record) MarshalJSON() ([]byte, error) {
	j := jsonRecord{
		Kind: r.Kind.String(), Time: r.Time, Src: addrPtr(r.Src), Dst: addrPtr(r.Dst),
		Proto: r.Proto, SrcPort: r.SrcPort, DstPort: r.DstPort, Role: r.Role.String(),
		Start: timePtr(r.Start), End: timePtr(r.End), EndReason: r.EndReason.String(),
		Verdict: r.Verdict.String(), PolicyIDs: r.PolicyIDs, Obligations: r.Obligations,
		Reason: r.Reason, Waypoints: r.Waypoints, PoT: r.PoT.String(), Receipts: r.Receipts,
		Subject: addrPtr(r.Subject), SPIFFEID: r.SPIFFEID, Outcome: r.Outcome.String(),
		TrustDomain: r.TrustDomain, Serial: r.Serial, Parent: addrPtr(r.Parent),
		Depth: r.Depth, NotAfter: timePtr(r.NotAfter), Origin: r.Origin,
	}
	if !r.Trace.IsZero() {
		j.Trace = r.Trace.String()
	}
	if !isZero(r.Nonce[:]) {
		j.Nonce = hex.EncodeToString(r.Nonce[:])
	}
	if !r.SrcTask.IsZero() {
		j.SrcTask = r.SrcTask.String()
	}
	if !r.DstTask.IsZero() {
		j.DstTask = r.DstTask.String()
	}
	if !r.Task.IsZero() {
		j.Task = r.Task.String()
	}
	if r.Fwd != (Counters{}) {
		j.Fwd = &r.Fwd
	}
	if r.Rev != (Counters{}) {
		j.Rev = &r.Rev
	}
	if !isZero(r.Digest[:]) {
		j.Digest = hex.EncodeToString(r.Digest[:])
	}
	for _, e := range r.Evidence {
		j.Evidence = append(j.Evidence, string(e))
	}
	for _, c := range r.Commitments {
		j.Commitments = append(j.Commitments, jsonCommit{Name: c.Name, Hash: hex.EncodeToString(c.Hash[:])})
	}
	return json.Marshal(j)
}

func addrPtr(a netip.Addr) *netip.Addr {
	if !a.IsValid() {
		return nil
	}
	return &a
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
