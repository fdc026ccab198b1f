package overlay

import (
	"errors"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// localSet is what the filter counts as this node: the agent's own address
// and those of its tasks. It is immutable, replaced whole on change, so the
// packet path reads it with one atomic load.
type localSet struct {
	primary [16]byte
	tasks   map[[16]byte]*taskAddr
	// ended remembers recently removed task addresses (until the time
	// given), so that the tail of their connections is counted as such
	// rather than as spoofing.
	ended map[[16]byte]time.Time
	// awaiting are peers being admitted: packets to them are held until
	// the WireGuard peer exists (EndAwait).
	awaiting map[[16]byte]*awaited
}

// endedGrace is how long a removed task address is remembered.
const endedGrace = 2 * time.Minute

// clone copies s for a change, pruning old ended entries.
func (s *localSet) clone(now time.Time) *localSet {
	next := &localSet{primary: s.primary, tasks: make(map[[16]byte]*taskAddr, len(s.tasks)+1), ended: make(map[[16]byte]time.Time, len(s.ended)),
		awaiting: make(map[[16]byte]*awaited, len(s.awaiting)+1)}
	for k, v := range s.tasks {
		next.tasks[k] = v
	}
	for k, v := range s.awaiting {
		next.awaiting[k] = v
	}
	for k, until := range s.ended {
		if now.Before(until) {
			next.ended[k] = until
		}
	}
	return next
}

// taskAddr is a task's address on this node. A peer may only receive the
// task's packets once it holds the task's delegation (otherwise its
// WireGuard would refuse them as spoofed), so the first packets to each
// peer are held until Release.
type taskAddr struct {
	addr  netip.Addr
	peers atomic.Pointer[map[[16]byte]struct{}] // peers holding the delegation; copy on write

	mu      sync.Mutex // guards pending
	pending map[[16]byte][][]byte
}

// maxHeld bounds the packets held per task and peer.
const maxHeld = 64

func (t *taskAddr) delivered(dst [16]byte) bool {
	m := t.peers.Load()
	if m == nil {
		return false
	}
	_, ok := (*m)[dst]
	return ok
}

// AddTask makes addr one of this node's addresses: it may send (each
// peer's first packets held until Release) and receive. Safe for
// concurrent use.
func (f *Filter) AddTask(addr netip.Addr) {
	f.localMu.Lock()
	defer f.localMu.Unlock()
	next := f.local.Load().clone(time.Now())
	delete(next.ended, addr.As16())
	if _, ok := next.tasks[addr.As16()]; !ok {
		next.tasks[addr.As16()] = &taskAddr{addr: addr, pending: make(map[[16]byte][][]byte)}
	}
	f.local.Store(next)
}

// RemoveTask removes a task address; its held packets are dropped.
func (f *Filter) RemoveTask(addr netip.Addr) {
	f.localMu.Lock()
	defer f.localMu.Unlock()
	old := f.local.Load()
	t := old.tasks[addr.As16()]
	if t == nil {
		return
	}
	now := time.Now()
	next := old.clone(now)
	delete(next.tasks, addr.As16())
	next.ended[addr.As16()] = now.Add(endedGrace)
	f.local.Store(next)
	t.mu.Lock()
	for _, held := range t.pending {
		f.drops[DropUndelivered].Add(uint64(len(held)))
	}
	t.pending = nil
	t.mu.Unlock()
}

// hold keeps a copy of a task's packet for a peer that has not yet
// acknowledged the task's delegation: its destination, or the first
// waypoint its flow crosses. Called with the flow table's read lock held;
// the first packet for a peer calls OnHold.
func (f *Filter) hold(t *taskAddr, peer [16]byte, pkt []byte) {
	t.mu.Lock()
	if t.pending == nil { // task removed meanwhile
		t.mu.Unlock()
		f.drops[DropUndelivered].Add(1)
		return
	}
	held, waiting := t.pending[peer]
	if len(held) >= maxHeld {
		t.mu.Unlock()
		f.drops[DropUndelivered].Add(1)
		return
	}
	t.pending[peer] = append(held, append([]byte(nil), pkt...))
	t.mu.Unlock()
	f.held.Add(1)
	if !waiting && f.cfg.OnHold != nil {
		f.cfg.OnHold(t.addr, netip.AddrFrom16(peer))
	}
}

// Release records that dst holds task's delegation and sends the packets
// held for it.
func (f *Filter) Release(task, dst netip.Addr) {
	t := f.local.Load().tasks[task.As16()]
	if t == nil {
		return
	}
	d := dst.As16()
	t.mu.Lock()
	old := t.peers.Load()
	next := make(map[[16]byte]struct{}, 1)
	if old != nil {
		for k := range *old {
			next[k] = struct{}{}
		}
	}
	next[d] = struct{}{}
	t.peers.Store(&next)
	held := t.pending[d]
	delete(t.pending, d)
	t.mu.Unlock()
	if len(held) == 0 {
		return
	}
	f.send(held...)
}

// Discard drops the packets held for dst (the delegation could not be
// delivered); the next packet tries again.
func (f *Filter) Discard(task, dst netip.Addr) {
	t := f.local.Load().tasks[task.As16()]
	if t == nil {
		return
	}
	t.mu.Lock()
	n := len(t.pending[dst.As16()])
	delete(t.pending, dst.As16())
	t.mu.Unlock()
	f.drops[DropUndelivered].Add(uint64(n))
}

// Forget makes dst receive the task's next packet only after a new
// delivery (the peer restarted, or the delegation was withdrawn there).
func (f *Filter) Forget(task, dst netip.Addr) {
	t := f.local.Load().tasks[task.As16()]
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.peers.Load()
	if old == nil {
		return
	}
	next := make(map[[16]byte]struct{}, len(*old))
	for k := range *old {
		if k != dst.As16() {
			next[k] = struct{}{}
		}
	}
	t.peers.Store(&next)
}

// send queues held packets to go out on the next Read, and wakes the
// reader so that it comes now.
func (f *Filter) send(pkts ...[]byte) {
	f.readyMu.Lock()
	for _, p := range pkts {
		f.ready = append(f.ready, readyPkt{pkt: p})
	}
	f.readyN.Store(int32(len(f.ready)))
	f.readyMu.Unlock()
	f.wake()
}

// takeReady moves queued packets into bufs: a run of released held
// packets, filtered like any read packet, or a run of forwarded ones,
// sent as they are.
func (f *Filter) takeReady(bufs [][]byte, sizes []int, offset int) int {
	f.readyMu.Lock()
	n := 0
	transit := len(f.ready) > 0 && f.ready[0].transit
	for n < len(bufs) && n < len(f.ready) && f.ready[n].transit == transit {
		p := f.ready[n]
		sizes[n] = 0
		if len(p.pkt) <= len(bufs[n])-offset { // always: they came from such buffers
			sizes[n] = copy(bufs[n][offset:], p.pkt)
		}
		if p.pooled != nil {
			fwdPool.Put(p.pooled)
		}
		n++
	}
	if transit {
		f.readyTransit -= n
	}
	// Shift the rest down, keeping the queue's array: a waypoint passes
	// a batch through it at every write.
	rest := copy(f.ready, f.ready[n:])
	clear(f.ready[rest:])
	f.ready = f.ready[:rest]
	f.readyN.Store(int32(len(f.ready)))
	f.readyMu.Unlock()
	if n > 0 && !transit {
		f.filterOut(bufs, sizes, n, offset)
	}
	return n
}

// errWoken is what a backend's Read returns when Wake interrupted it.
var errWoken = errors.New("overlay: read interrupted to send released packets")

// waker is a backend whose blocked Read can be interrupted.
type waker interface{ Wake() }

// wake interrupts the reader blocked in the backend, so that it sends the
// released packets now: the netstack backend has a wake channel, the kernel
// TUN a pollable file whose read deadline can be moved.
func (f *Filter) wake() {
	if w, ok := f.inner.(waker); ok {
		w.Wake()
		return
	}
	if file := f.inner.File(); file != nil {
		file.SetReadDeadline(time.Now())
	}
}

// woken reports whether err is a wake-up rather than a failure, and
// re-arms the backend.
func (f *Filter) woken(err error) bool {
	switch {
	case errors.Is(err, errWoken):
		return true
	case errors.Is(err, os.ErrDeadlineExceeded):
		if file := f.inner.File(); file != nil {
			file.SetReadDeadline(time.Time{})
		}
		return true
	}
	return false
}
