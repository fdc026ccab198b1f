package membership

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node/card"
)

// recordVersion is the AgentRecord payload version.
const recordVersion = 1

// agentPayload is the signed body of an AgentRecord (JSON).
type agentPayload struct {
	V          int              `json:"v"`
	Seq        uint64           `json:"seq"`
	Credential []byte           `json:"credential"` // X.509 DER
	Endpoints  []netip.AddrPort `json:"endpoints,omitempty"`
	Issued     time.Time        `json:"issued"`
	Card       json.RawMessage  `json:"card,omitempty"` // A2A-shaped agent card
}

// record is a verified AgentRecord: an agent's full, signed description of
// itself, as gossip carries it.
type record struct {
	raw       []byte // the SignedRecord encoding, as received
	digest    [16]byte
	agentKey  identity.PublicKey
	wgKey     identity.WGPublicKey
	addr      netip.Addr
	seq       uint64
	credDER   []byte
	endpoints []netip.AddrPort
	card      *card.Card // nil if the agent published none
}

// newRecord signs an AgentRecord for k.
func newRecord(k identity.PrivateKey, seq uint64, credential []byte, endpoints []netip.AddrPort, cardJSON []byte, now time.Time) ([]byte, error) {
	payload, err := json.Marshal(agentPayload{V: recordVersion, Seq: seq, Credential: credential, Endpoints: endpoints, Issued: now.UTC(), Card: cardJSON})
	if err != nil {
		return nil, err
	}
	sr, err := identity.SignRecord(k, identity.RecordAgent, payload)
	if err != nil {
		return nil, err
	}
	return sr.Marshal(), nil
}

func digestOf(raw []byte) [16]byte {
	h := sha256.Sum256(raw)
	return [16]byte(h[:16])
}

// parseRecord decodes and checks the signature and internal consistency of
// an AgentRecord, without the credential check (see Membership.verify).
// vouched skips the signature: the caller holds a verified meta of the same
// signer carrying this record's digest (see Membership.metaVouches).
func parseRecord(raw []byte, vouched bool) (*record, error) {
	sr, err := identity.DecodeSignedRecord(raw)
	if err == nil && !vouched {
		err = sr.Verify()
	}
	if err != nil {
		return nil, refusal(ReasonBadSignature, err)
	}
	if sr.Type != identity.RecordAgent {
		return nil, refusal(ReasonMalformed, fmt.Errorf("record type %s, want agent", sr.Type))
	}
	var p agentPayload
	if err := json.Unmarshal(sr.Payload, &p); err != nil {
		return nil, refusal(ReasonMalformed, fmt.Errorf("agent record: %v", err))
	}
	if p.V != recordVersion {
		return nil, refusal(ReasonMalformed, fmt.Errorf("agent record version %d, want %d", p.V, recordVersion))
	}
	if len(p.Endpoints) > maxEndpoints {
		return nil, refusal(ReasonMalformed, fmt.Errorf("%d endpoints, at most %d", len(p.Endpoints), maxEndpoints))
	}
	wg, err := sr.Signer.WireGuard()
	if err != nil {
		return nil, refusal(ReasonMalformed, err)
	}
	var c *card.Card
	if len(p.Card) > 0 {
		if c, err = card.Parse(p.Card); err != nil {
			return nil, refusal(ReasonMalformed, err)
		}
	}
	return &record{
		card:      c,
		raw:       append([]byte(nil), raw...),
		digest:    digestOf(raw),
		agentKey:  sr.Signer,
		wgKey:     wg,
		addr:      wg.Addr(),
		seq:       p.Seq,
		endpoints: p.Endpoints,
		credDER:   p.Credential,
	}, nil
}

// maxEndpoints bounds the endpoints a record or meta may list.
const maxEndpoints = 4

// meta is the compact signed record in memberlist's node meta (≤512
// bytes): who the node is (the signer), its record's sequence number and
// digest, and where to reach it.
type meta struct {
	agentKey  identity.PublicKey
	wgKey     identity.WGPublicKey
	addr      netip.Addr // derived from the key once: it is a cSHAKE per call
	seq       uint64
	digest    [16]byte
	endpoints []netip.AddrPort
}

// Meta payload: version(1) | seq(8) | digest(16) | n(1) | n × (addr(16) | port(2)).
const metaVersion = 1

func encodeMeta(k identity.PrivateKey, seq uint64, digest [16]byte, endpoints []netip.AddrPort) ([]byte, error) {
	if len(endpoints) > maxEndpoints {
		endpoints = endpoints[:maxEndpoints]
	}
	p := make([]byte, 0, 26+18*len(endpoints))
	p = append(p, metaVersion)
	p = binary.BigEndian.AppendUint64(p, seq)
	p = append(p, digest[:]...)
	p = append(p, byte(len(endpoints)))
	for _, ep := range endpoints {
		a := ep.Addr().As16()
		p = append(p, a[:]...)
		p = binary.BigEndian.AppendUint16(p, ep.Port())
	}
	sr, err := identity.SignRecord(k, identity.RecordMeta, p)
	if err != nil {
		return nil, err
	}
	return sr.Marshal(), nil
}

// decodeMeta decodes node meta and checks its signature, unless implied
// (if not nil) reports that the decoded, still unauthenticated meta says
// nothing a verified record has not already said (see
// Membership.recordImplies).
func decodeMeta(b []byte, implied func(*meta) bool) (*meta, error) {
	sr, err := identity.DecodeSignedRecord(b)
	if err != nil {
		return nil, refusal(ReasonBadSignature, err)
	}
	if sr.Type != identity.RecordMeta {
		return nil, refusal(ReasonMalformed, fmt.Errorf("meta record type %s", sr.Type))
	}
	p := sr.Payload
	if len(p) < 26 || p[0] != metaVersion {
		return nil, refusal(ReasonMalformed, errors.New("meta: bad version or length"))
	}
	m := &meta{agentKey: sr.Signer, seq: binary.BigEndian.Uint64(p[1:9]), digest: [16]byte(p[9:25])}
	n := int(p[25])
	if n > maxEndpoints || len(p) != 26+18*n {
		return nil, refusal(ReasonMalformed, errors.New("meta: bad endpoint list"))
	}
	for i := range n {
		e := p[26+18*i:]
		m.endpoints = append(m.endpoints, netip.AddrPortFrom(netip.AddrFrom16([16]byte(e[:16])).Unmap(), binary.BigEndian.Uint16(e[16:18])))
	}
	if m.wgKey, err = sr.Signer.WireGuard(); err != nil {
		return nil, refusal(ReasonMalformed, err)
	}
	m.addr = m.wgKey.Addr()
	if implied == nil || !implied(m) {
		if err := sr.Verify(); err != nil {
			return nil, refusal(ReasonBadSignature, err)
		}
	}
	return m, nil
}

// SignAgentRecord returns the signed AgentRecord of the agent holding k:
// its credential (X.509 DER), the endpoints it is reached at, and its
// sequence number (a higher one supersedes a lower). Nodes make their own;
// it is exported for tools and tests that speak the protocol.
func SignAgentRecord(k identity.PrivateKey, seq uint64, credential []byte, endpoints []netip.AddrPort, now time.Time) ([]byte, error) {
	return newRecord(k, seq, credential, endpoints, nil, now)
}
