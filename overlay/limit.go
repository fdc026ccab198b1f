package overlay

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// limiters is a bounded table of token buckets, one per key (a source
// address, a pair of peers), behind a global bucket: what any one key may
// do, and what all of them together may. When the table is full, keys
// idle for idleAfter are dropped; if none is, a new key gets only the
// global bucket's leftovers, so a flood from many sources cannot push out
// the buckets of those already known. Safe for concurrent use.
type limiters[K comparable] struct {
	every  rate.Limit
	burst  int
	max    int
	global *rate.Limiter // nil: no global bound

	mu sync.Mutex
	m  map[K]*limiterEntry
}

type limiterEntry struct {
	lim  *rate.Limiter
	last time.Time
}

// idleAfter is how long a key goes unused before its bucket may be dropped.
const idleAfter = 10 * time.Second

func newLimiters[K comparable](every rate.Limit, burst, max int, global rate.Limit, globalBurst int) *limiters[K] {
	l := &limiters[K]{every: every, burst: burst, max: max, m: make(map[K]*limiterEntry)}
	if global > 0 {
		l.global = rate.NewLimiter(global, globalBurst)
	}
	return l
}

// allow reports whether key may spend n tokens at now.
func (l *limiters[K]) allow(key K, n int, now time.Time) bool {
	l.mu.Lock()
	e := l.m[key]
	if e == nil {
		if len(l.m) >= l.max {
			for k, old := range l.m {
				if now.Sub(old.last) > idleAfter {
					delete(l.m, k)
				}
			}
		}
		if len(l.m) >= l.max {
			l.mu.Unlock()
			return l.global != nil && l.global.AllowN(now, n)
		}
		e = &limiterEntry{lim: rate.NewLimiter(l.every, l.burst)}
		l.m[key] = e
	}
	e.last = now
	ok := e.lim.AllowN(now, n)
	l.mu.Unlock()
	if ok && l.global != nil {
		ok = l.global.AllowN(now, n)
	}
	return ok
}

// len is the number of keys tracked.
func (l *limiters[K]) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}
