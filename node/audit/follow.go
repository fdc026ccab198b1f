package audit

import (
	"sync"
	"sync/atomic"
)

// Entry is a record as the log holds it: its index and encoding.
type Entry struct {
	Index  uint64 `json:"index"`
	Record Record `json:"record"`
}

// MaxSubscribers bounds the log's concurrent followers.
const MaxSubscribers = 64

// DefaultFollowBuffer is a subscription's buffer when Subscribe is given 0.
const DefaultFollowBuffer = 1024

// Subscription receives the log's records as they are written, in log
// order. A subscriber that falls behind loses records (counted by
// Dropped); it never slows the log.
type Subscription struct {
	c       chan Entry
	filter  func(*Record) bool
	dropped atomic.Uint64
	hub     *hub
	once    sync.Once
}

// C delivers the entries. It is closed by Close, and when the log closes.
func (s *Subscription) C() <-chan Entry { return s.c }

// Dropped returns how many entries this subscriber missed because its
// buffer was full.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close ends the subscription and closes C. It is idempotent.
func (s *Subscription) Close() { s.hub.remove(s) }

// hub fans records out to subscribers, never blocking the writer.
type hub struct {
	mu      sync.Mutex // guards subs and closed
	subs    map[*Subscription]struct{}
	closed  bool
	dropped atomic.Uint64 // entries any subscriber missed
}

func newHub() *hub { return &hub{subs: make(map[*Subscription]struct{})} }

func (h *hub) subscribe(buffer int, filter func(*Record) bool) (*Subscription, error) {
	if buffer <= 0 {
		buffer = DefaultFollowBuffer
	}
	s := &Subscription{c: make(chan Entry, buffer), filter: filter, hub: h}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.closed:
		return nil, ErrClosed
	case len(h.subs) >= MaxSubscribers:
		return nil, ErrQueueFull
	}
	h.subs[s] = struct{}{}
	return s, nil
}

func (h *hub) remove(s *Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		s.once.Do(func() { close(s.c) })
	}
}

// active reports whether anyone is subscribed (so the writer can skip the
// work of publishing).
func (h *hub) active() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs) > 0
}

// publish offers e to every subscriber whose filter takes it.
func (h *hub) publish(e Entry) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if s.filter != nil && !s.filter(&e.Record) {
			continue
		}
		select {
		case s.c <- e:
		default:
			s.dropped.Add(1)
			h.dropped.Add(1)
		}
	}
}

// close ends every subscription.
func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for s := range h.subs {
		delete(h.subs, s)
		s.once.Do(func() { close(s.c) })
	}
}
