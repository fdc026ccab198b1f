package membership

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/agent6/agent6/identity"
)

var errCtrlRate = errors.New("admission frames over the source's rate")

// HandleControl takes an admission frame that arrived on the node's UDP
// socket from an unauthenticated source. It is called on the receive path:
// it checks the header and the source's rate (no signature, no copy) and
// queues a copy for the actor; what fails is refused and counted. It never
// blocks.
func (m *Membership) HandleControl(from netip.AddrPort, frame []byte) {
	typ, err := frameHeader(frame)
	if err == nil && typ != ctrlHello && typ != ctrlAck && typ != ctrlRefused {
		err = fmt.Errorf("%w: type %d is not an admission frame", errFrame, typ)
	}
	if err != nil {
		m.refuse(refusal(ReasonMalformed, err), "endpoint", from)
		return
	}
	if !m.ctrlLimit.Allow(from, 1, time.Now()) {
		// The hot path of a flood: a counter, and a log line now and then.
		if n, due := m.count(ReasonRateLimited); due {
			m.log.Warn("refused", "reason", string(ReasonRateLimited), "err", errCtrlRate, "total", n, "endpoint", from)
		}
		return
	}
	select {
	case m.ctrl <- event{kind: evControl, from: from, data: append([]byte(nil), frame...)}:
	default:
		m.refuse(refusal(ReasonOverload, errors.New("admission queue full")), "endpoint", from)
	}
}

// handleControlFrame verifies an admission frame and acts on it: a HELLO
// admits its sender at the frame's source and is answered with an ACK; an
// ACK to a HELLO this node sent admits its sender; a REFUSED may tell this
// node that its credential is revoked. Cheap checks come first (type,
// freshness against the sender's last frame, an ACK's nonce, records
// refused before), then the one signature check. Called by the actor only.
func (m *Membership) handleControlFrame(from netip.AddrPort, b []byte) {
	if m.leaving.Load() {
		return // gone from the cluster: admit no one, answer no one
	}
	if b[2] == ctrlRefused {
		m.handleRefused(b[3:])
		return
	}
	h, err := openHello(b)
	if err != nil {
		m.refuse(refusal(ReasonMalformed, err), "endpoint", from)
		return
	}
	now := time.Now()
	if h.typ == ctrlAck {
		m.mu.Lock()
		asked, ok := m.asked.Get(h.echo)
		m.mu.Unlock()
		if !ok || asked.to != from || now.Sub(asked.at) > askedTTL {
			m.refuse(refusal(ReasonUnknownResponse, errors.New("an ACK to no HELLO this node sent to its source")), "endpoint", from)
			return
		}
	}
	dig := digestOf(h.record)
	m.mu.Lock()
	r, bad := m.refused[dig]
	var last int64
	if p := m.ids.agents[m.signerAddr(h.record)]; p != nil {
		last = p.helloTS
	}
	m.mu.Unlock()
	if bad {
		m.refuse(refusal(r, errors.New("record refused before")), "endpoint", from)
		m.tellRevoked(from, r, dig)
		return
	}
	if err := fresh(h.ts, last, now); err != nil {
		m.refuse(refusal(ReasonReplay, err), "endpoint", from)
		return
	}
	if err := h.verify(); err != nil {
		m.refuse(refusal(ReasonBadSignature, err), "endpoint", from)
		return
	}
	p, err := m.learn(h.record, h, from)
	if err != nil || p == nil {
		if r := reasonOf(err); err != nil && r == ReasonRevoked {
			m.tellRevoked(from, r, dig)
		}
		return // refused (counted) or our own record
	}
	if h.typ == ctrlHello {
		m.sendAck(from, h.nonce)
	}
	m.mu.Lock()
	if h.typ == ctrlAck {
		m.asked.Take(h.echo) // one ACK per HELLO
	}
	w := m.waiters[p.rec.wgKey]
	delete(m.waiters, p.rec.wgKey)
	m.mu.Unlock()
	if w != nil {
		close(w)
	}
}

// nextTS returns a timestamp for a signed frame: now, or just after the
// last one, so that receivers, which want each later than the last, never
// refuse this node's frames for a clock step or two frames in a
// nanosecond.
func (m *Membership) nextTS() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lastTS = max(time.Now().UnixNano(), m.lastTS+1)
	return m.lastTS
}

// sendHello sends a HELLO to the node at to and remembers its nonce, so
// that the ACK can be told from a replay or a made-up one.
func (m *Membership) sendHello(to netip.AddrPort) error {
	n := newNonce()
	ts := m.nextTS()
	m.mu.Lock()
	own := m.own
	m.asked.Put(n, askedHello{to: to, at: time.Now()})
	m.mu.Unlock()
	frame, err := sealHello(m.cfg.Key, ctrlHello, n, nonce{}, ts, own)
	if err != nil {
		return fmt.Errorf("membership: hello: %w", err)
	}
	return m.sendControl(to, frame)
}

// sendAck answers the HELLO whose nonce is echo.
func (m *Membership) sendAck(to netip.AddrPort, echo nonce) {
	ts := m.nextTS()
	m.mu.Lock()
	own := m.own
	m.mu.Unlock()
	frame, err := sealHello(m.cfg.Key, ctrlAck, newNonce(), echo, ts, own)
	if err == nil {
		err = m.sendControl(to, frame)
	}
	if err != nil {
		m.log.Debug("ack not sent", "endpoint", to, "err", err)
	}
}

func (m *Membership) sendControl(to netip.AddrPort, frame []byte) error {
	m.hellos.Add(1)
	if err := m.cfg.Control.SendControl(to, frame); err != nil {
		return fmt.Errorf("membership: send to %s: %w", to, err)
	}
	return nil
}

// learn verifies a record (h, if not nil, is the verified admission frame
// that carried it, whose signature covers its bytes) and, when it came
// with a UDP source (an admission frame), admits its agent with that
// source as its WireGuard endpoint. It returns nil, nil for this node's
// own record. Called by the actor only.
func (m *Membership) learn(raw []byte, h *hello, from netip.AddrPort) (*peer, error) {
	dig := digestOf(raw)
	m.mu.Lock()
	if r, bad := m.refused[dig]; bad {
		m.mu.Unlock()
		err := refusal(r, errors.New("record refused before"))
		m.refuse(err, "endpoint", from)
		return nil, err
	}
	// The same bytes as a record already verified: only time can have
	// changed the verdict (expiry is swept, revocation applied on arrival),
	// so skip the signature and chain checks.
	var rec *record
	var cred *identity.Credential
	if p := m.ids.agents[m.signerAddr(raw)]; p != nil && p.rec.digest == dig && p.cred != nil && time.Now().Before(p.cred.NotAfter) {
		rec, cred = p.rec, p.cred
	}
	m.mu.Unlock()

	var err error
	if rec == nil {
		rec, cred, err = m.verify(raw, h != nil)
	}
	if err != nil {
		m.refuse(err, "endpoint", from)
		if r := reasonOf(err); r != ReasonOverload && r != ReasonStale {
			m.rememberRefusal(dig, r)
		}
		return nil, err
	}
	if rec.wgKey.Equal(m.wgKey) {
		return nil, nil
	}

	m.mu.Lock()
	p := m.ids.agents[rec.addr]
	var displaced *remoteTask
	switch {
	case p != nil && !p.rec.wgKey.Equal(rec.wgKey):
		m.mu.Unlock()
		err := refusal(ReasonAddrConflict, fmt.Errorf("address %s is held by key %s", rec.addr, p.rec.wgKey))
		m.refuse(err)
		return nil, err
	case p != nil && rec.seq < p.rec.seq:
		m.mu.Unlock()
		err := refusal(ReasonStale, fmt.Errorf("sequence %d older than %d", rec.seq, p.rec.seq))
		m.refuse(err, "addr", rec.addr)
		return nil, err
	case p == nil && len(m.ids.agents) >= maxAgents:
		m.mu.Unlock()
		err := refusal(ReasonOverload, fmt.Errorf("this node knows %d agents already", len(m.ids.agents)))
		m.refuse(err, "addr", rec.addr)
		return nil, err
	case p == nil:
		p = &peer{state: StatePending}
		if displaced, err = m.ids.addAgent(rec.addr, p); err != nil {
			m.mu.Unlock()
			m.refuse(err, "addr", rec.addr)
			return nil, err
		}
	}
	p.rec, p.cred = rec, cred
	if h != nil {
		p.helloTS = h.ts
	}
	admit := from.IsValid() && (!p.admitted() || p.endpoint != from)
	if !from.IsValid() && !p.admitted() && time.Since(p.helloAt) > helloEvery {
		// Known now, but not yet spoken to: ask it directly.
		p.helloAt = time.Now()
		eps := rec.endpoints
		m.mu.Unlock()
		m.undoClaim(displaced, rec.addr)
		m.ask(rec.addr, eps)
		return p, nil
	}
	m.mu.Unlock()
	m.undoClaim(displaced, rec.addr)
	if !admit {
		return p, nil
	}
	return p, m.admit(p, rec, cred, from)
}

// admit makes the agent of rec a WireGuard peer at endpoint from.
func (m *Membership) admit(p *peer, rec *record, cred *identity.Credential, from netip.AddrPort) error {
	if err := m.cfg.Peers.SetPeer(rec.wgKey, from, m.taskPrefixes(rec.addr)); err != nil {
		m.log.Error("cannot configure WireGuard peer", "peer", rec.wgKey.ShortString(), "err", err)
		return err
	}
	m.endAsking(rec.addr, true)
	m.mu.Lock()
	newly := !p.admitted()
	revived := !p.deadSince.IsZero()
	p.state, p.endpoint, p.deadSince = StateAlive, from, time.Time{}
	if newly {
		p.admittedAt = time.Now()
	}
	m.mu.Unlock()
	if revived {
		select {
		case m.rejoin <- rec.addr:
		default:
		}
	}
	if newly {
		m.admits.Add(1)
		m.known.dirty.Store(true)
		m.log.Info("admitted", "addr", rec.addr, "peer", rec.wgKey.ShortString(), "spiffe_id", cred.ID, "endpoint", from)
	}
	return nil
}

// undoClaim withdraws a peer's task that claimed the address of an agent
// now known here (the agent wins), from the claimer's WireGuard peer too.
func (m *Membership) undoClaim(rt *remoteTask, agent netip.Addr) {
	if rt == nil {
		return
	}
	m.refuse(refusal(ReasonTaskDisplaced, fmt.Errorf("agent %s took back its address from a task of %s", agent, rt.owner)), "addr", rt.owner, "task", agent)
	m.mu.Lock()
	owner := m.ids.agents[rt.owner]
	m.mu.Unlock()
	if owner != nil && owner.admitted() {
		if err := m.cfg.Peers.AllowTask(owner.rec.wgKey, agent, false); err != nil {
			m.log.Error("cannot remove a displaced task address", "task", agent, "err", err)
		}
	}
}

func (m *Membership) rememberRefusal(dig [16]byte, r Reason) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rememberRefusalLocked(dig, r)
}

// rememberRefusalLocked records that the record with digest dig was
// refused for r, evicting an arbitrary entry when the table is full.
// Called with m.mu held.
func (m *Membership) rememberRefusalLocked(dig [16]byte, r Reason) {
	if _, ok := m.refused[dig]; !ok && len(m.refused) >= maxRefused {
		for k := range m.refused {
			delete(m.refused, k)
			break
		}
	}
	m.refused[dig] = r
}

// verify checks a record completely: signature (unless vouched: a
// verified frame or meta of its signer covers its bytes), key and address
// binding, credential chain, expiry and revocation.
func (m *Membership) verify(raw []byte, vouched bool) (*record, *identity.Credential, error) {
	if !vouched {
		m.mu.Lock()
		vouched = m.metaVouches(raw)
		m.mu.Unlock()
	}
	rec, err := parseRecord(raw, vouched)
	if err != nil {
		return nil, nil, err
	}
	cred, err := m.cfg.Bundle.Verify(rec.credDER, time.Now())
	if err != nil {
		return nil, nil, refusal(credentialReason(err), err)
	}
	if !cred.AgentKey.Equal(rec.agentKey) {
		return nil, nil, refusal(ReasonKeyMismatch, fmt.Errorf("credential %s is for another agent key", cred.ID))
	}
	if cred.Addr != rec.addr {
		return nil, nil, refusal(ReasonAddrMismatch, fmt.Errorf("credential address %s, key address %s", cred.Addr, rec.addr))
	}
	m.mu.Lock()
	e := m.revs.matching(cred)
	if e != nil {
		m.revs.noteRefused(digestOf(raw), e.rev.CertSHA256)
	}
	m.mu.Unlock()
	if e != nil {
		return nil, nil, refusal(ReasonRevoked, fmt.Errorf("credential %s (serial %s) is revoked", cred.ID, cred.Serial))
	}
	return rec, cred, nil
}

func credentialReason(err error) Reason {
	switch {
	case errors.Is(err, identity.ErrUntrusted):
		return ReasonUntrusted
	case errors.Is(err, identity.ErrExpired):
		return ReasonExpired
	}
	return ReasonBadCredential
}

// askUnknown sends a HELLO to a node that memberlist announced but whose
// record is not admitted.
func (m *Membership) askUnknown(addr netip.Addr, mt *meta) {
	m.mu.Lock()
	p := m.ids.agents[addr]
	if p != nil && p.admitted() && p.rec.digest == mt.digest {
		m.mu.Unlock()
		return
	}
	if p != nil && time.Since(p.helloAt) < helloEvery {
		m.mu.Unlock()
		return
	}
	if p != nil {
		p.helloAt = time.Now()
	}
	m.mu.Unlock()
	m.ask(addr, mt.endpoints)
}

// ask sends a HELLO to the agent at addr, which gossip announced, unless
// it was asked less than helloEvery ago or the budget of such HELLOs
// (askRate: gossip can name any endpoint) is spent; if it is not a peer
// yet, packets to it are held until it is admitted (see Peers.Await), so
// that the gossip and probes memberlist sends it meanwhile are not lost.
func (m *Membership) ask(addr netip.Addr, endpoints []netip.AddrPort) {
	now := time.Now()
	m.mu.Lock()
	if at, ok := m.asking[addr]; ok && now.Sub(at) < helloEvery {
		m.mu.Unlock()
		return
	}
	if !m.askLimit.AllowN(now, 1) {
		m.mu.Unlock()
		m.refuse(refusal(ReasonRateLimited, errors.New("HELLOs to agents gossip announced over their rate")), "addr", addr)
		return
	}
	p := m.ids.agents[addr]
	await := p == nil || !p.admitted()
	if await {
		if _, ok := m.asking[addr]; !ok && len(m.asking) >= maxRefused {
			await = false // bounded: beyond this, packets are not held
		} else {
			m.asking[addr] = now
		}
	}
	m.mu.Unlock()
	if await {
		m.cfg.Peers.Await(addr)
	}
	for _, ep := range endpoints {
		m.sendHello(ep)
	}
}

// endAsking stops holding packets for addr: deliver them if it has just
// been admitted, drop them if it did not answer in time.
func (m *Membership) endAsking(addr netip.Addr, deliver bool) {
	m.mu.Lock()
	_, ok := m.asking[addr]
	delete(m.asking, addr)
	m.mu.Unlock()
	if ok {
		m.cfg.Peers.EndAwait(addr, deliver)
	}
}

// expireAsking gives up on the agents asked more than awaitTimeout ago,
// and forgets HELLOs whose ACK is overdue.
func (m *Membership) expireAsking(now time.Time) {
	var late []netip.Addr
	m.mu.Lock()
	for a, at := range m.asking {
		if now.Sub(at) > awaitTimeout {
			late = append(late, a)
		}
	}
	m.asked.Expire(func(a askedHello) bool { return now.Sub(a.at) > askedTTL })
	m.mu.Unlock()
	for _, a := range late {
		m.endAsking(a, false)
	}
}

// tellRevokedEvery bounds how often one endpoint is told it is revoked.
const tellRevokedEvery = 10 * time.Second

// tellRevoked answers an admission frame refused because its sender's
// credential is revoked with a REFUSED frame carrying the CA-signed
// revocation: the sender can verify it against its own bundle, so it
// learns the truth and stops retrying, and nobody can make it believe a
// false one. At most once per endpoint every tellRevokedEvery.
func (m *Membership) tellRevoked(to netip.AddrPort, r Reason, dig [16]byte) {
	if r != ReasonRevoked {
		return
	}
	now := time.Now()
	m.mu.Lock()
	raw := m.revs.rawFor(dig)
	if raw == nil || !m.revs.tell(to, now) {
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()
	frame := append([]byte{ctrlMagic, ctrlVersion, ctrlRefused}, raw...)
	if err := m.cfg.Control.SendControl(to, frame); err != nil {
		m.log.Debug("refusal not sent", "endpoint", to, "err", err)
	}
}

// handleRefused takes a REFUSED frame: if it carries a revocation of this
// node's own credential, signed by a CA of its trust domain, the node
// records it, says so, and stops joining. Anything else is refused.
func (m *Membership) handleRefused(raw []byte) {
	if m.Revoked() != nil {
		return // known already: nothing to check
	}
	sr, err := identity.DecodeSignedRecord(raw)
	if err == nil {
		var rev *identity.Revocation
		if rev, err = m.cfg.Bundle.VerifyRevocation(sr); err == nil {
			if !rev.Matches(m.cred) {
				err = fmt.Errorf("a revocation of %s, not of this node", rev.ID)
			} else {
				m.apply(rev, digestOf(raw), append([]byte(nil), raw...))
				return
			}
		}
	}
	m.refuse(refusal(ReasonBadRevocation, fmt.Errorf("REFUSED frame: %w", err)))
}
