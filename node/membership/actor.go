package membership

import (
	"errors"
	"net/netip"
	"time"
)

type eventKind int

const (
	evControl    eventKind = iota // an admission frame arrived (ctrl queue)
	evRecord                      // a record arrived through gossip
	evAlive                       // memberlist announced a node: ask it if unknown
	evLeave                       // memberlist declared a node dead or left
	evJoin                        // memberlist declared a node alive
	evRevocation                  // a revocation to verify and apply
	evPeer                        // a peer frame (DELEGATE, END, LEAVE) from an admitted peer
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

// enqueue hands an event that came through WireGuard or from memberlist
// to the actor without blocking; a full queue drops it (counted as
// overload). Frames from the network have a queue of their own (see
// HandleControl), so that a flood of them never drops these.
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

// actor is the one goroutine that changes the identity table and drives
// WireGuard's peers. Admission frames and events wait in separate queues,
// served alike: a flood of admission frames fills only its own (and each
// source is rate-limited before it), so events keep at least half of the
// actor's turns and are never dropped for it.
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
		case now := <-sweep.C:
			m.sweepExpired(now)
			m.sweepTasks(now)
			m.revs.prune(&m.mu, now)
		case <-reconnect.C:
			m.reconnectDead()
			m.saveKnown()
		case now := <-tick.C:
			m.maintain(now)
		case ev := <-m.events:
			m.handle(ev)
		case ev := <-m.ctrl:
			m.handle(ev)
		}
	}
}

func (m *Membership) handle(ev event) {
	switch ev.kind {
	case evControl:
		m.handleControlFrame(ev.from, ev.data)
	case evRecord:
		m.learn(ev.data, nil, netip.AddrPort{})
	case evAlive:
		m.askUnknown(ev.addr, ev.meta)
	case evJoin:
		m.mu.Lock()
		if p := m.ids.agents[ev.addr]; p != nil && p.admitted() {
			p.state, p.deadSince = StateAlive, time.Time{}
		}
		m.mu.Unlock()
	case evLeave:
		if ev.state == "dead" {
			m.markDead(ev.addr)
		} else {
			m.remove(ev.addr, StateLeft)
		}
	case evPeer:
		m.handlePeerFrame(ev.from, ev.data)
	case evRevocation:
		rev, err := m.applyRevocation(ev.data)
		if ev.done != nil {
			ev.done <- revResult{rev, err}
		}
	}
}
