package membership

import (
	"context"
	"math"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Maintenance: the actor's once-a-second work (maintain), the sweeps, and
// the push/pulls that repair what gossip lost (rejoinLoop) or speed a join
// through a busy seed (pushPullHedged). What is due is decided from the
// identity table's lifecycle states; the push/pulls run outside the actor,
// at most maxRejoins at once.

// maintain is the actor's tick: give up on agents asked too long ago,
// check and remove dead peers, ask removed ones back, catch up with peers
// gossip lost.
func (m *Membership) maintain(now time.Time) {
	m.expireAsking(now)
	m.checkDead(now)
	m.removeDead(now)
	m.helloDead(now)
	m.catchUp(now)
}

// markDead records that memberlist declared an admitted peer dead, and
// how much WireGuard had received from it then. Its WireGuard peer stays
// for deadGrace (removeDead removes it then, unless it kept talking): a
// node declared dead by mistake — slow under load, as in a join storm —
// hears of it and refutes through the session it still has, where
// removing the peer at once would cut the refutation off and cost a
// HELLO, a new handshake and a push/pull to undo. checkDead uses that
// session too.
func (m *Membership) markDead(addr netip.Addr) {
	m.mu.Lock()
	p := m.ids.agents[addr]
	if p == nil || p.state != StateAlive {
		m.mu.Unlock()
		return
	}
	p.state, p.deadSince, p.deadCheck = StateDead, time.Now(), false
	key := p.rec.wgKey
	m.mu.Unlock()
	rx, err := m.cfg.Peers.Received()
	m.mu.Lock()
	if err == nil && p.state == StateDead {
		p.deadRx = rx[key]
	}
	m.mu.Unlock()
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
	for addr, p := range m.ids.agents {
		if p.state == StateDead && !p.deadCheck && now.Sub(p.deadSince) >= deadCheckAfter {
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
// not alive since — unless WireGuard received from them meanwhile:
// authenticated traffic is better evidence than probes gossip missed (on
// a loaded node, or across a lossy path, memberlist's timers declare
// live peers dead), and removing a peer that still talks would cut its
// connections. Such a peer keeps its WireGuard peer and stays dead to
// memberlist, is push/pulled with again (checkDead), and is looked at
// again a grace later; counted as DeathsOverruled.
func (m *Membership) removeDead(now time.Time) { m.removeDeadAt(now, m.ml.NumMembers()) }

// removeDeadAt is removeDead in a cluster of n members.
func (m *Membership) removeDeadAt(now time.Time, n int) {
	grace := gossipSpread(m.mlConf, n)
	due := func(p *peer) bool { return p.state == StateDead && now.Sub(p.deadSince) >= grace }
	m.mu.Lock()
	some := false
	for _, p := range m.ids.agents {
		some = some || due(p)
	}
	m.mu.Unlock()
	if !some {
		return
	}
	rx, err := m.cfg.Peers.Received()
	m.removeIf(StateRemoved, func(addr netip.Addr, p *peer) bool {
		if !due(p) {
			return false
		}
		if got, ok := rx[p.rec.wgKey]; err == nil && ok && got > p.deadRx {
			p.deadSince, p.deadRx, p.deadCheck = now, got, false
			m.overrule.Add(1)
			m.log.Debug("declared dead but still talking: kept", "addr", addr, "received", got)
			return false
		}
		return true
	})
}

// removeIf removes, recording state, the peers for which cond holds;
// cond is called with m.mu held.
func (m *Membership) removeIf(state State, cond func(netip.Addr, *peer) bool) {
	var gone []netip.Addr
	m.mu.Lock()
	for addr, p := range m.ids.agents {
		if cond(addr, p) {
			gone = append(gone, addr)
		}
	}
	m.mu.Unlock()
	for _, a := range gone {
		m.remove(a, state)
	}
}

// remove takes a peer out of WireGuard, recording why: StateRemoved
// (dead beyond its grace, or never heard of by memberlist), StateLeft,
// StateRevoked or StateExpired.
func (m *Membership) remove(addr netip.Addr, state State) {
	m.mu.Lock()
	p := m.ids.agents[addr]
	if p == nil {
		m.mu.Unlock()
		return
	}
	was := p.admitted()
	p.state = state
	if state == StateRemoved {
		now := time.Now()
		if p.deadSince.IsZero() {
			p.deadSince = now
		}
		p.reconnectAt, p.reconnectGap = now.Add(firstReconnect), 0
	}
	m.ids.dropTasksOf(p) // a node that comes back delivers its tasks again
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
	m.known.dirty.Store(true)
	m.log.Info("peer removed", "addr", addr, "peer", key.ShortString(), "state", state.String())
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
	for addr, p := range m.ids.agents {
		if !p.admitted() && !p.deadSince.IsZero() && now.Sub(p.deadSince) > m.cfg.DeadForget {
			delete(m.ids.agents, addr)
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
	m.removeIf(StateRemoved, func(addr netip.Addr, p *peer) bool {
		return p.state == StateAlive && !live[nodeName(addr)] && now.Sub(p.admittedAt) > 3*m.cfg.ReconnectInterval
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
	for _, p := range m.ids.agents {
		if p.admitted() || p.deadSince.IsZero() || now.Before(p.reconnectAt) {
			continue
		}
		p.reconnectGap = min(max(2*p.reconnectGap, firstReconnect), m.cfg.ReconnectInterval)
		p.reconnectAt = now.Add(p.reconnectGap)
		targets = append(targets, p.targets()...)
	}
	m.mu.Unlock()
	for _, ep := range targets {
		m.sendHello(ep)
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
	target, storm := catchUpTarget(m.ids.agents, live, now, spread, m.gossipNewsAt)
	if target.IsValid() {
		m.ids.agents[target].catchUpAt = now
		m.ids.agents[target].catchUps++
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
		if p.state != StateAlive {
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

func (m *Membership) sweepExpired(now time.Time) {
	m.removeIf(StateExpired, func(_ netip.Addr, p *peer) bool { return p.admitted() && p.cred != nil && now.After(p.cred.NotAfter) })
	if now.After(m.cred.NotAfter) {
		m.log.Error("this node's credential has expired; peers will refuse it", "spiffe_id", m.cred.ID, "expired", m.cred.NotAfter)
	}
}

// maxRejoins is how many push/pulls rejoinLoop runs at once. One with a
// peer that really died waits out memberlist's TCPTimeout (10 s on a LAN);
// the others must not queue behind it.
const maxRejoins = 4

// rejoinLoop push/pulls with peers that answered after being declared
// dead, so that memberlist hears them refute it, with peers declared dead
// a second ago (see checkDead) and with admitted peers memberlist never
// heard of (see catchUp), at most maxRejoins at a time.
func (m *Membership) rejoinLoop() {
	slots := make(chan struct{}, maxRejoins)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-m.done:
			return
		case a := <-m.rejoin:
			select {
			case slots <- struct{}{}:
			case <-m.done:
				return
			}
			wg.Go(func() {
				defer func() { <-slots }()
				if _, err := m.ml.Join([]string{gossipAddr(a, m.cfg.Port)}); err != nil {
					m.log.Debug("rejoin failed", "addr", a, "err", err)
				}
			})
		}
	}
}

// joinHedge is how long a join's push/pull may take before another starts
// with a peer admitted meanwhile, and maxJoinHedges how many such may run.
const (
	joinHedge     = 2 * time.Second
	maxJoinHedges = 3
)

// pushPullHedged push/pulls with the node at seed, as memberlist's Join
// does. When the seed is slow to answer — in a join storm every joiner
// push/pulls with it at once, and at 200 nodes in one process one joiner
// in seven waited out memberlist's whole TCPTimeout (10 s) — it also
// push/pulls, every joinHedge, with a peer admitted meanwhile (one that
// heard of this node from the seed's gossip and said HELLO): any member's
// state is as good as the seed's. The first to succeed ends the join; the
// others finish in the background, within memberlist's TCPTimeout, or at
// once when Close shuts memberlist and so its transport down.
func (m *Membership) pushPullHedged(ctx context.Context, seed netip.Addr) error {
	results := make(chan error, 1+maxJoinHedges)
	pushPull := func(a netip.Addr) {
		_, err := m.ml.Join([]string{gossipAddr(a, m.cfg.Port)})
		results <- err
	}
	go pushPull(seed)
	tried := map[netip.Addr]bool{seed: true}
	running := 1
	tick := time.NewTicker(joinHedge)
	defer tick.Stop()
	var last error
	for running > 0 {
		select {
		case err := <-results:
			running--
			if err == nil {
				return nil
			}
			last = err
		case <-tick.C:
			if len(tried) > maxJoinHedges {
				continue
			}
			if a := m.hedgePeer(tried); a.IsValid() {
				tried[a] = true
				running++
				m.log.Debug("join is slow; also push/pulling with a peer", "seed", seed, "peer", a)
				go pushPull(a)
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-m.done:
			return net.ErrClosed
		}
	}
	return last
}

// hedgePeer returns an admitted, live peer not in tried, or the zero Addr.
func (m *Membership) hedgePeer(tried map[netip.Addr]bool) netip.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	for a, p := range m.ids.agents { // map order: a random pick
		if p.state == StateAlive && !tried[a] {
			return a
		}
	}
	return netip.Addr{}
}
