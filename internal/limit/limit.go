// Package limit is token buckets per key (a source address, a pair of
// peers) behind one for all keys together, in a bounded table: what any
// one sender may do and what all of them may, checked with a map lookup
// before anything costly. It uses golang.org/x/time/rate's buckets.
package limit

import (
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/agent6/agent6/internal/lru"
)

// Keyed is a token bucket per key behind a global one. Its table holds at
// most max keys: a new key takes the place of the least recently seen
// one if that has been idle for Idle, and otherwise (a flood of new keys
// while the known ones are busy) gets no bucket of its own and only what
// the global bucket has left, so a flood from many sources can neither
// grow the table nor push out the buckets of those already known. Every
// operation is O(1). Safe for concurrent use.
type Keyed[K comparable] struct {
	per   rate.Limit
	burst int
	// Idle is how long a key goes unseen before its bucket may be given
	// to a new key (default 10 s).
	Idle time.Duration

	mu  sync.Mutex
	all *rate.Limiter // nil: no global bound
	m   *lru.Map[K, *bucket]
}

type bucket struct {
	lim  *rate.Limiter
	last time.Time
}

// NewKeyed returns a table of max keys, each allowed per events a second
// in bursts of burst, all together total a second in bursts of
// totalBurst (total 0: no global bound).
func NewKeyed[K comparable](per rate.Limit, burst int, total rate.Limit, totalBurst, max int) *Keyed[K] {
	l := &Keyed[K]{per: per, burst: burst, Idle: 10 * time.Second, m: lru.New[K, *bucket](max)}
	if total > 0 {
		l.all = rate.NewLimiter(total, totalBurst)
	}
	return l
}

// Allow reports whether key may spend n tokens at now.
func (l *Keyed[K]) Allow(key K, n int, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.m.Get(key)
	if !ok {
		if l.m.Full() {
			if _, old, _ := l.m.Oldest(); now.Sub(old.last) < l.Idle {
				return l.all != nil && l.all.AllowN(now, n)
			}
		}
		b = &bucket{lim: rate.NewLimiter(l.per, l.burst)}
	}
	b.last = now
	l.m.Put(key, b) // the most recently seen now
	return b.lim.AllowN(now, n) && (l.all == nil || l.all.AllowN(now, n))
}

// Len is the number of keys with a bucket of their own.
func (l *Keyed[K]) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m.Len()
}
