package membership

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/agent6/agent6/identity"
)

// Control frames: magic(1)=0xa6 | version(1)=1 | type(1) | AgentRecord.
const (
	ctrlMagic   = 0xa6
	ctrlVersion = 1
	ctrlHello   = 1 // "here is my record; send me yours"
	ctrlAck     = 2 // "here is mine"
)

type eventKind int

const (
	evControl    eventKind = iota // a control frame arrived
	evRecord                      // a record arrived through gossip
	evAlive                       // memberlist announced a node: ask it if unknown
	evLeave                       // memberlist declared a node dead or left
	evJoin                        // memberlist declared a node alive
	evRevocation                  // a revocation to verify and apply
	evTask                        // a delegation or task end from a peer
)

type event struct {
	kind  eventKind
	from  netip.AddrPort
	data  []byte
	addr  netip.Addr
	state string
	meta  *meta
	done  chan revResult
}

// HandleControl takes a control frame that arrived on the node's UDP
// socket. It copies the frame, queues it and returns at once; a full queue
// drops the frame (counted as overload).
func (m *Membership) HandleControl(from netip.AddrPort, frame []byte) {
	m.enqueue(event{kind: evControl, from: from, data: append([]byte(nil), frame...)})
}

// enqueue hands an event to the actor without blocking.
func (m *Membership) enqueue(ev event) bool {
	select {
	case m.events <- ev:
		return true
	default:
		m.refuse(refusal(ReasonOverload, errors.New("event queue full")))
		return false
	}
}

// enqueueWait hands an event to the actor, waiting for room; for events
// that must not be lost.
func (m *Membership) enqueueWait(ev event) {
	select {
	case m.events <- ev:
	case <-m.done:
	}
}

func (m *Membership) actor() {
	sweep := time.NewTicker(m.cfg.SweepInterval)
	defer sweep.Stop()
	reconnect := time.NewTicker(m.cfg.ReconnectInterval)
	defer reconnect.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-sweep.C:
			m.sweepExpired()
			m.sweepTasks(time.Now())
		case <-reconnect.C:
			m.reconnectDead()
		case now := <-tick.C:
			m.expireAsking(now)
			m.checkDead(now)
			m.removeDead(now)
			m.helloDead(now)
			m.catchUp(now)
		case ev := <-m.events:
			m.handle(ev)
		}
	}
}

func (m *Membership) handle(ev event) {
	switch ev.kind {
	case evControl:
		m.handleControlFrame(ev.from, ev.data)
	case evRecord:
		m.learn(ev.data, netip.AddrPort{})
	case evAlive:
		m.askUnknown(ev.addr, ev.meta)
	case evJoin:
		m.mu.Lock()
		if p := m.peers[ev.addr]; p != nil && p.admitted {
			p.state, p.deadSince = "alive", time.Time{}
		}
		m.mu.Unlock()
	case evLeave:
		if ev.state == "dead" {
			m.markDead(ev.addr)
		} else {
			m.remove(ev.addr, ev.state)
		}
	case evTask:
		m.handleTaskFrame(ev.from, ev.data)
	case evRevocation:
		rev, err := m.applyRevocation(ev.data)
		if ev.done != nil {
			ev.done <- revResult{rev, err}
		}
	}
}

func (m *Membership) handleControlFrame(from netip.AddrPort, b []byte) {
	if m.leaving.Load() {
		return // gone from the cluster: admit no one, answer no one
	}
	if len(b) < 3 || b[0] != ctrlMagic || b[1] != ctrlVersion || (b[2] != ctrlHello && b[2] != ctrlAck) {
		m.refuse(refusal(ReasonMalformed, errors.New("control frame header")), "endpoint", from)
		return
	}
	p, err := m.learn(b[3:], from)
	if err != nil || p == nil {
		return // refused (counted) or our own record
	}
	if b[2] == ctrlHello {
		m.sendHello(from, ctrlAck)
	}
	m.mu.Lock()
	w := m.waiters[p.rec.wgKey]
	delete(m.waiters, p.rec.wgKey)
	m.mu.Unlock()
	if w != nil {
		close(w)
	}
}

func (m *Membership) sendHello(to netip.AddrPort, typ byte) error {
	m.mu.Lock()
	own := m.own
	m.mu.Unlock()
	frame := make([]byte, 0, 3+len(own))
	frame = append(frame, ctrlMagic, ctrlVersion, typ)
	frame = append(frame, own...)
	m.hellos.Add(1)
	if err := m.cfg.Control.SendControl(to, frame); err != nil {
		return fmt.Errorf("membership: send to %s: %w", to, err)
	}
	return nil
}

// learn verifies a record and, when it came with a UDP source (a control
// frame), admits its agent with that source as its WireGuard endpoint. It
// returns nil, nil for this node's own record. Called by the actor only.
func (m *Membership) learn(raw []byte, from netip.AddrPort) (*peer, error) {
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
	if p := m.peers[m.signerAddr(raw)]; p != nil && p.rec.digest == dig && p.cred != nil && time.Now().Before(p.cred.NotAfter) {
		rec, cred = p.rec, p.cred
	}
	m.mu.Unlock()

	var err error
	if rec == nil {
		rec, cred, err = m.verify(raw)
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
	p := m.peers[rec.addr]
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
	case p == nil:
		p = &peer{state: "pending"}
		m.peers[rec.addr] = p
	}
	p.rec, p.cred = rec, cred
	admit := from.IsValid() && (!p.admitted || p.endpoint != from)
	if !from.IsValid() && !p.admitted && time.Since(p.helloAt) > helloEvery {
		// Known now, but not yet spoken to: ask it directly.
		p.helloAt = time.Now()
		eps := rec.endpoints
		m.mu.Unlock()
		m.ask(rec.addr, eps)
		return p, nil
	}
	m.mu.Unlock()
	if !admit {
		return p, nil
	}
	if err := m.cfg.Peers.SetPeer(rec.wgKey, from, m.taskPrefixes(rec.addr)); err != nil {
		m.log.Error("cannot configure WireGuard peer", "peer", rec.wgKey.ShortString(), "err", err)
		return nil, err
	}
	m.endAsking(rec.addr, true)
	m.mu.Lock()
	newly := !p.admitted
	revived := !p.deadSince.IsZero()
	p.admitted, p.endpoint, p.state, p.deadSince = true, from, "alive", time.Time{}
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
		m.log.Info("admitted", "addr", rec.addr, "peer", rec.wgKey.ShortString(), "spiffe_id", cred.ID, "endpoint", from)
	}
	return p, nil
}

func (m *Membership) rememberRefusal(dig [16]byte, r Reason) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.refused) >= maxRefused {
		for k := range m.refused { // evict an arbitrary entry
			delete(m.refused, k)
			break
		}
	}
	m.refused[dig] = r
}

// verify checks a record completely: signature, key and address binding,
// credential chain, expiry and revocation.
func (m *Membership) verify(raw []byte) (*record, *identity.Credential, error) {
	m.mu.Lock()
	vouched := m.metaVouches(raw)
	m.mu.Unlock()
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
	if m.isRevoked(cred) {
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

func (m *Membership) isRevoked(c *identity.Credential) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.revs {
		if r.rev.Matches(c) {
			return true
		}
	}
	return false
}

// askUnknown sends a HELLO to a node that memberlist announced but whose
// record is not admitted.
func (m *Membership) askUnknown(addr netip.Addr, mt *meta) {
	m.mu.Lock()
	p := m.peers[addr]
	if p != nil && p.admitted && p.rec.digest == mt.digest {
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
// it was asked less than helloEvery ago; if it is not a peer yet, packets
// to it are held until it is admitted (see Peers.Await), so that the
// gossip and probes memberlist sends it meanwhile are not lost.
func (m *Membership) ask(addr netip.Addr, endpoints []netip.AddrPort) {
	now := time.Now()
	m.mu.Lock()
	if at, ok := m.asking[addr]; ok && now.Sub(at) < helloEvery {
		m.mu.Unlock()
		return
	}
	p := m.peers[addr]
	await := p == nil || !p.admitted
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
		m.sendHello(ep, ctrlHello)
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

// expireAsking gives up on the agents asked more than awaitTimeout ago.
func (m *Membership) expireAsking(now time.Time) {
	var late []netip.Addr
	m.mu.Lock()
	for a, at := range m.asking {
		if now.Sub(at) > awaitTimeout {
			late = append(late, a)
		}
	}
	m.mu.Unlock()
	for _, a := range late {
		m.endAsking(a, false)
	}
}

// markDead records that memberlist declared an admitted peer dead. Its
// WireGuard peer stays for deadGrace (removeDead removes it then): a node
// declared dead by mistake — slow under load, as in a join storm — hears
// of it and refutes through the session it still has, where removing the
// peer at once would cut the refutation off and cost a HELLO, a new
// handshake and a push/pull to undo. checkDead uses that session too.
func (m *Membership) markDead(addr netip.Addr) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[addr]
	if p == nil || !p.admitted || p.state == "dead" {
		return
	}
	p.state, p.deadSince, p.deadCheck = "dead", time.Now(), false
}

// deadCheckAfter is how long a peer declared dead may stay so before
// checkDead push/pulls with it: a refutation that gossip brings within it
// makes the push/pull unnecessary.
const deadCheckAfter = time.Second

// checkDead push/pulls, through the WireGuard session it keeps for
// deadGrace, with each peer declared dead at least deadCheckAfter ago and
// not alive since. A declaration of death is often stale rather than
// wrong: the peer had refuted the suspicion with a higher incarnation
// whose alive message this node missed, so the rest of the cluster
// ignored the dead message, no one relayed it and the peer may never hear
// of it; gossip had finished with the refutation too, so only a push/pull
// repairs this node's view, where otherwise the peer would wait for its
// removal and a HELLO after it (see helloDead; at 200 nodes, with HELLOs
// every 10 s, one such pair held a join up for 13 s). A live peer answers
// with its current state, which revives it here or makes it refute; a dead
// one does not answer, and the push/pull fails without effect after
// memberlist's TCPTimeout. Counted as catch-ups.
func (m *Membership) checkDead(now time.Time) {
	if m.leaving.Load() {
		return
	}
	var due []netip.Addr
	m.mu.Lock()
	for addr, p := range m.peers {
		if p.admitted && p.state == "dead" && !p.deadCheck && now.Sub(p.deadSince) >= deadCheckAfter {
			p.deadCheck = true
			due = append(due, addr)
		}
	}
	m.mu.Unlock()
	for _, a := range due {
		select {
		case m.rejoin <- a:
			m.catchUps.Add(1)
		default:
		}
	}
}

// removeDead removes the peers declared dead at least deadGrace ago and
// not alive since.
func (m *Membership) removeDead(now time.Time) {
	grace := m.deadGrace()
	m.removeIf("dead", func(_ netip.Addr, p *peer) bool {
		return p.admitted && p.state == "dead" && now.Sub(p.deadSince) >= grace
	})
}

// removeIf removes, recording state, the peers for which cond holds;
// cond is called with m.mu held.
func (m *Membership) removeIf(state string, cond func(netip.Addr, *peer) bool) {
	var gone []netip.Addr
	m.mu.Lock()
	for addr, p := range m.peers {
		if cond(addr, p) {
			gone = append(gone, addr)
		}
	}
	m.mu.Unlock()
	for _, a := range gone {
		m.remove(a, state)
	}
}

// deadGrace is how long a peer declared dead keeps its WireGuard peer:
// the time gossip takes to spread its refutation.
func (m *Membership) deadGrace() time.Duration {
	return gossipSpread(m.mlConf, m.ml.NumMembers())
}

// remove takes a peer out of WireGuard, recording why.
func (m *Membership) remove(addr netip.Addr, state string) {
	m.mu.Lock()
	p := m.peers[addr]
	if p == nil {
		m.mu.Unlock()
		return
	}
	was := p.admitted
	p.admitted, p.state = false, state
	if state == "dead" {
		now := time.Now()
		if p.deadSince.IsZero() {
			p.deadSince = now
		}
		p.reconnectAt, p.reconnectGap = now.Add(firstReconnect), 0
	}
	for t := range p.tasks { // a node that comes back delivers its tasks again
		delete(m.taskOwner, t)
	}
	p.tasks = nil
	key := p.rec.wgKey
	m.mu.Unlock()
	if !was {
		return
	}
	if m.cfg.OnPeerRemoved != nil {
		m.cfg.OnPeerRemoved(addr)
	}
	if err := m.cfg.Peers.RemovePeer(key); err != nil {
		m.log.Error("cannot remove WireGuard peer", "peer", key.ShortString(), "err", err)
	}
	m.removes.Add(1)
	m.log.Info("peer removed", "addr", addr, "peer", key.ShortString(), "state", state)
}

// targets are the endpoints a HELLO to p goes to: where it was last heard
// from, then those its record advertises. Called with m.mu held.
func (p *peer) targets() []netip.AddrPort {
	var out []netip.AddrPort
	if p.endpoint.IsValid() {
		out = append(out, p.endpoint)
	}
	for _, ep := range p.rec.endpoints {
		if ep != p.endpoint {
			out = append(out, ep)
		}
	}
	return out
}

// reconnectDead reconciles the peer table with memberlist (see
// removeUnlisted) and forgets the peers dead longer than DeadForget.
func (m *Membership) reconnectDead() {
	now := time.Now()
	if m.ml != nil {
		live := make(map[string]bool)
		for _, n := range m.ml.Members() {
			live[n.Name] = true
		}
		m.removeUnlisted(now, live)
	}
	m.mu.Lock()
	for addr, p := range m.peers {
		if !p.admitted && !p.deadSince.IsZero() && now.Sub(p.deadSince) > m.cfg.DeadForget {
			delete(m.peers, addr)
		}
	}
	m.mu.Unlock()
}

// removeUnlisted removes the admitted peers that memberlist does not list
// as alive or suspect (live, by node name) although they were admitted
// over three reconnect intervals ago: a leave event lost, or a HELLO
// answered just before its sender left. A peer memberlist declared dead
// is not one of them: it keeps its WireGuard peer for deadGrace, so that
// its refutation can come through, and removeDead removes it after that.
func (m *Membership) removeUnlisted(now time.Time, live map[string]bool) {
	m.removeIf("dead", func(addr netip.Addr, p *peer) bool {
		return p.admitted && p.state != "dead" && !live[nodeName(addr)] && now.Sub(p.admittedAt) > 3*m.cfg.ReconnectInterval
	})
}

// firstReconnect is how long after its removal a dead peer is first sent a
// HELLO; the gap then doubles up to ReconnectInterval.
const firstReconnect = time.Second

// helloDead sends a HELLO to each removed dead peer that is due one: a
// node wrongly declared dead answers, is re-admitted, and a push/pull
// lets memberlist hear its refutation. The first goes out firstReconnect
// after the removal, because most declarations of death in a join storm
// are wrong and each is undone only by this: with every 10 s, as before,
// the last few held a 200-node join up for as long.
func (m *Membership) helloDead(now time.Time) {
	if m.leaving.Load() {
		return
	}
	var targets []netip.AddrPort
	m.mu.Lock()
	for _, p := range m.peers {
		if p.admitted || p.deadSince.IsZero() || now.Before(p.reconnectAt) {
			continue
		}
		p.reconnectGap = min(max(2*p.reconnectGap, firstReconnect), m.cfg.ReconnectInterval)
		p.reconnectAt = now.Add(p.reconnectGap)
		targets = append(targets, p.targets()...)
	}
	m.mu.Unlock()
	for _, ep := range targets {
		m.sendHello(ep, ctrlHello)
	}
}

// catchUp push/pulls with one admitted peer that memberlist has not heard
// of although gossip had time to bring it: its alive message was lost (a
// dropped packet in a join storm) and gossip has stopped retransmitting
// it, so without this the pair would wait for a periodic push/pull (90 s
// at 100 nodes) or the reconciliation would remove the peer (at 100 nodes
// the join took 40 s instead of 3 without it). One push/pull brings the
// peer's whole view, so one per second is enough.
func (m *Membership) catchUp(now time.Time) {
	if m.leaving.Load() {
		return
	}
	live := make(map[string]bool)
	for _, n := range m.ml.Members() {
		live[n.Name] = true
	}
	spread := gossipSpread(m.mlConf, m.ml.NumMembers())
	m.mu.Lock()
	if len(live) > m.knownMembers {
		m.gossipNewsAt = now // gossip is still bringing news
	}
	m.knownMembers = len(live)
	target, storm := catchUpTarget(m.peers, live, now, spread, m.gossipNewsAt)
	if target.IsValid() {
		m.peers[target].catchUpAt = now
		m.peers[target].catchUps++
		if storm {
			m.gossipNewsAt = now // give this push/pull's news time to show
		}
	}
	m.mu.Unlock()
	if !target.IsValid() {
		return
	}
	select {
	case m.rejoin <- target:
		m.catchUps.Add(1)
	default:
	}
}

// maxStragglers is how many admitted peers memberlist may not know of for
// them to count as lost rather than still on their way.
const maxStragglers = 3

// quietSpreads is how many gossip spreads memberlist must have learned of
// no new member before a node with many unknown admitted peers catches up.
const quietSpreads = 2

// catchUpTarget picks the admitted peer to catch up with: of those not
// declared dead and unknown to memberlist (live, by node name), the one
// admitted longest ago, once due. A few such peers (maxStragglers) are
// stragglers whose alive message was lost: due a second after admission.
// Many means gossip may still be spreading a join storm's alive messages,
// which queue behind each other for longer than one message's spread, and
// push/pulls then add to the busiest moment (always catching up cost 3–4
// CPU-s in a 200-node join): then one is due only when memberlist has
// learned of no new member for quietSpreads (news is when it last did, or
// when the last such catch-up was; storm reports one). Waiting a fixed ten
// spreads instead held a 50-node join up for 16 s when one node had
// missed four alive messages, and three spreads added push/pulls to a
// 200-node storm that was still progressing. After a catch-up that did
// not help (a peer admitted but cut off from gossip) the next with that
// peer waits spread, doubling each time up to 32 spreads. It resets the
// count of peers memberlist knows. The zero Addr if none is due. Called
// with m.mu held.
func catchUpTarget(peers map[netip.Addr]*peer, live map[string]bool, now time.Time, spread time.Duration, news time.Time) (target netip.Addr, storm bool) {
	var oldest time.Time
	unknown := 0
	for addr, p := range peers {
		if live[nodeName(addr)] {
			p.catchUps = 0
			continue
		}
		if !p.admitted || p.state == "dead" {
			continue
		}
		unknown++
		if now.Sub(p.admittedAt) < time.Second || now.Sub(p.catchUpAt) < spread<<min(p.catchUps, 5) {
			continue
		}
		if !target.IsValid() || p.admittedAt.Before(oldest) {
			target, oldest = addr, p.admittedAt
		}
	}
	if unknown <= maxStragglers || !target.IsValid() {
		return target, false
	}
	if now.Sub(news) < quietSpreads*spread {
		return netip.Addr{}, false
	}
	return target, true
}

// gossipSpread is how long memberlist keeps retransmitting a broadcast in
// a cluster of n: RetransmitMult × ⌈log10(n+1)⌉ gossip rounds, at least a
// second. An alive message not heard by then will not be.
func gossipSpread(c *memberlist.Config, n int) time.Duration {
	rounds := c.RetransmitMult * int(math.Ceil(math.Log10(float64(n+1))))
	return max(time.Duration(rounds)*c.GossipInterval, time.Second)
}

func (m *Membership) sweepExpired() {
	now := time.Now()
	m.removeIf("expired", func(_ netip.Addr, p *peer) bool { return p.admitted && p.cred != nil && now.After(p.cred.NotAfter) })
	if now.After(m.cred.NotAfter) {
		m.log.Error("this node's credential has expired; peers will refuse it", "spiffe_id", m.cred.ID, "expired", m.cred.NotAfter)
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
	known := m.revs[dig]
	m.mu.Unlock()
	if known != nil {
		return known.rev, nil
	}
	sr, err := identity.ParseSignedRecord(raw)
	if err == nil {
		var rev *identity.Revocation
		if rev, err = m.cfg.Bundle.VerifyRevocation(sr); err == nil {
			m.apply(rev, dig, raw)
			return rev, nil
		}
	}
	err = refusal(ReasonBadRevocation, err)
	m.refuse(err)
	return nil, err
}

func (m *Membership) apply(rev *identity.Revocation, dig [16]byte, raw []byte) {
	m.mu.Lock()
	m.revs[dig] = &revEntry{raw: raw, rev: rev}
	var hit []netip.Addr
	for addr, p := range m.peers {
		if p.cred != nil && rev.Matches(p.cred) {
			hit = append(hit, addr)
			m.refused[p.rec.digest] = ReasonRevoked
		}
	}
	m.mu.Unlock()
	m.log.Info("revocation applied", "trust_domain", rev.TrustDomain, "serial", rev.Serial, "peers_removed", len(hit))
	for _, a := range hit {
		m.remove(a, "revoked")
	}
	if rev.Matches(m.cred) {
		m.log.Error("this node's own credential has been revoked; peers will refuse it", "spiffe_id", m.cred.ID)
	}
	if m.bcast != nil {
		m.bcast.QueueBroadcast(&broadcast{key: fmt.Sprintf("rev:%x", dig), msg: append([]byte{msgRevocation}, raw...)})
	}
}

// Gossip message types (user messages, inside memberlist).
const (
	msgRecord     = 1
	msgRevocation = 2
)

type broadcast struct {
	key string
	msg []byte
}

func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*broadcast)
	return ok && ob.key == b.key
}
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}
