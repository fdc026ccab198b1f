package membership

import (
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/internal/lru"
)

// revocations are the verified revocations this node holds, indexed by
// the digest of their signed bytes (gossip dedupes on it) and by the
// SHA-256 of the certificate each revokes (admission looks a credential
// up in O(1)). A revocation is kept until the credential it names expires
// (prune), and at most maxRevocations at once. Guarded by Membership.mu.
type revocations struct {
	byDigest map[[16]byte]*revEntry
	byCert   map[[32]byte]*revEntry
	// refusedBy maps the digest of a record refused as revoked to its
	// credential's hash, so that its sender can be sent the revocation
	// (tellRevoked) without parsing the record again; told is when each
	// endpoint was last sent one.
	refusedBy map[[16]byte][32]byte
	told      *lru.Map[netip.AddrPort, time.Time]
}

type revEntry struct {
	raw []byte
	rev *identity.Revocation
}

// maxRevocations bounds the revocations held. Revocations are CA-signed
// and short-lived credentials make them few; the bound is for a CA key in
// the wrong hands.
const maxRevocations = 1 << 16

func newRevocations() revocations {
	return revocations{byDigest: make(map[[16]byte]*revEntry), byCert: make(map[[32]byte]*revEntry),
		refusedBy: make(map[[16]byte][32]byte), told: lru.New[netip.AddrPort, time.Time](maxSources)}
}

// matching returns the revocation of c, or nil.
func (r *revocations) matching(c *identity.Credential) *revEntry {
	e := r.byCert[sha256.Sum256(c.Raw)]
	if e == nil || e.rev.TrustDomain != c.TrustDomain {
		return nil
	}
	return e
}

// noteRefused remembers that the record with digest dig was refused for
// the credential whose hash is cert.
func (r *revocations) noteRefused(dig [16]byte, cert [32]byte) {
	if len(r.refusedBy) >= maxRefused {
		for k := range r.refusedBy {
			delete(r.refusedBy, k)
			break
		}
	}
	r.refusedBy[dig] = cert
}

// rawFor returns the signed revocation that refused the record with
// digest dig, or nil.
func (r *revocations) rawFor(dig [16]byte) []byte {
	cert, ok := r.refusedBy[dig]
	if !ok {
		return nil
	}
	if e := r.byCert[cert]; e != nil {
		return e.raw
	}
	return nil
}

// tell reports whether endpoint to may be sent a revocation now, and
// notes that it is.
func (r *revocations) tell(to netip.AddrPort, now time.Time) bool {
	if last, ok := r.told.Get(to); ok && now.Sub(last) < tellRevokedEvery {
		return false
	}
	r.told.Put(to, now)
	return true
}

// prune forgets revocations whose credential has expired: an expired
// credential is refused without them.
func (r *revocations) prune(mu *sync.Mutex, now time.Time) {
	mu.Lock()
	defer mu.Unlock()
	for d, e := range r.byDigest {
		if now.After(e.rev.NotAfter) {
			delete(r.byDigest, d)
			delete(r.byCert, e.rev.CertSHA256)
		}
	}
}

// Revoke verifies a CA-signed revocation (the SignedRecord encoding),
// applies it — removing every matching peer — and gossips it. Revoking
// twice is not an error.
func (m *Membership) Revoke(raw []byte) (*identity.Revocation, error) {
	done := make(chan revResult, 1)
	m.enqueueWait(event{kind: evRevocation, data: append([]byte(nil), raw...), done: done})
	select {
	case r := <-done:
		return r.rev, r.err
	case <-m.done:
		return nil, fmt.Errorf("membership: revoke: %w", net.ErrClosed)
	}
}

type revResult struct {
	rev *identity.Revocation
	err error
}

// applyRevocation verifies and applies a revocation; new ones are
// gossiped. Called by the actor only.
func (m *Membership) applyRevocation(raw []byte) (*identity.Revocation, error) {
	dig := digestOf(raw)
	m.mu.Lock()
	known := m.revs.byDigest[dig]
	full := len(m.revs.byDigest) >= maxRevocations
	m.mu.Unlock()
	if known != nil {
		return known.rev, nil
	}
	sr, err := identity.DecodeSignedRecord(raw)
	if err == nil {
		var rev *identity.Revocation
		if rev, err = m.cfg.Bundle.VerifyRevocation(sr); err == nil {
			if !time.Now().Before(rev.NotAfter) {
				return rev, nil // the credential has expired: nothing to revoke
			}
			if full {
				err := refusal(ReasonOverload, fmt.Errorf("%d revocations held already", maxRevocations))
				m.refuse(err)
				return nil, err
			}
			m.apply(rev, dig, raw)
			return rev, nil
		}
	}
	err = refusal(ReasonBadRevocation, err)
	m.refuse(err)
	return nil, err
}

// apply records a verified revocation, removes the peers it matches, and
// gossips it.
func (m *Membership) apply(rev *identity.Revocation, dig [16]byte, raw []byte) {
	e := &revEntry{raw: raw, rev: rev}
	m.mu.Lock()
	m.revs.byDigest[dig] = e
	m.revs.byCert[rev.CertSHA256] = e
	var hit []netip.Addr
	for addr, p := range m.ids.agents {
		if p.cred != nil && rev.Matches(p.cred) {
			hit = append(hit, addr)
			m.rememberRefusalLocked(p.rec.digest, ReasonRevoked)
			m.revs.noteRefused(p.rec.digest, rev.CertSHA256)
		}
	}
	self := rev.Matches(m.cred) && m.revoked == nil
	if self {
		m.revoked = rev
	}
	m.mu.Unlock()
	m.log.Info("revocation applied", "trust_domain", rev.TrustDomain, "serial", rev.Serial, "peers_removed", len(hit))
	for _, a := range hit {
		m.remove(a, StateRevoked)
	}
	if self {
		m.log.Error("this node's own credential has been revoked; peers refuse it and it stops joining", "spiffe_id", m.cred.ID, "serial", rev.Serial, "revoked_at", rev.RevokedAt)
	}
	if m.bcast != nil {
		m.bcast.QueueBroadcast(&broadcast{key: fmt.Sprintf("rev:%x", dig), msg: append([]byte{msgRevocation}, raw...)})
	}
}
