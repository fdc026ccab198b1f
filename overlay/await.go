package overlay

import (
	"net/netip"
	"sync"
	"time"
)

// awaited holds the packets sent to a peer while it is being admitted.
type awaited struct {
	mu   sync.Mutex
	held [][]byte // nil once the wait has ended
	done bool
}

// Await holds, from now on, the packets this node sends to dst, until
// EndAwait. Membership calls it when it has heard of an agent and asked it
// for its record: until both sides have admitted each other, WireGuard has
// no peer for dst and would drop them, and the first packets to a new
// member are gossip and probes whose loss costs retransmissions and false
// suspicions. At most maxHeld packets are held per peer. Awaiting an
// address already awaited does nothing. Safe for concurrent use.
func (f *Filter) Await(dst netip.Addr) {
	f.localMu.Lock()
	defer f.localMu.Unlock()
	cur := f.local.Load()
	if _, ok := cur.awaiting[dst.As16()]; ok {
		return
	}
	next := cur.clone(time.Now())
	next.awaiting[dst.As16()] = &awaited{}
	f.local.Store(next)
}

// EndAwait stops holding packets for dst. With deliver (the WireGuard peer
// now exists) the held packets are sent; without, they are dropped and
// counted as not_admitted.
func (f *Filter) EndAwait(dst netip.Addr, deliver bool) {
	f.localMu.Lock()
	cur := f.local.Load()
	w := cur.awaiting[dst.As16()]
	if w == nil {
		f.localMu.Unlock()
		return
	}
	next := cur.clone(time.Now())
	delete(next.awaiting, dst.As16())
	f.local.Store(next)
	f.localMu.Unlock()

	w.mu.Lock()
	held := w.held
	w.held, w.done = nil, true
	w.mu.Unlock()
	if len(held) == 0 {
		return
	}
	if !deliver {
		f.drops[DropNotAdmitted].Add(uint64(len(held)))
		return
	}
	f.send(held...)
}

// Awaiting reports whether packets to dst are being held.
func (f *Filter) Awaiting(dst netip.Addr) bool {
	_, ok := f.local.Load().awaiting[dst.As16()]
	return ok
}

// holdAwaiting keeps a copy of a packet for a peer being admitted. A
// packet that arrives after the wait ended (a snapshot read just before)
// goes into the ready queue, and is sent or refused by WireGuard like any.
func (f *Filter) holdAwaiting(w *awaited, pkt []byte) {
	cp := append([]byte(nil), pkt...)
	w.mu.Lock()
	switch {
	case w.done:
		w.mu.Unlock()
		f.send(cp)
		return
	case len(w.held) >= maxHeld:
		w.mu.Unlock()
		f.drops[DropNotAdmitted].Add(1)
		return
	}
	w.held = append(w.held, cp)
	w.mu.Unlock()
	f.held.Add(1)
}
