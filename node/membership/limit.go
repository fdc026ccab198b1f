package membership

import (
	"container/list"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// sourceLimiter is a token bucket per source address and one for all
// sources together, in front of every signature check that a frame from
// the network can cause: a source over its rate, or a flood from many
// sources over the total, is refused with a map lookup, before the frame
// is copied or queued. Its table is bounded; the least recently seen
// source is evicted in O(1) (it comes back with a full bucket, which
// costs it nothing). Safe for concurrent use.
type sourceLimiter struct {
	per   rate.Limit
	burst int
	max   int

	mu    sync.Mutex
	all   *rate.Limiter
	m     map[netip.AddrPort]*list.Element
	order *list.List // of *sourceBucket, most recently seen first
}

type sourceBucket struct {
	src netip.AddrPort
	lim *rate.Limiter
}

func newSourceLimiter(per rate.Limit, burst int, total rate.Limit, totalBurst, max int) *sourceLimiter {
	return &sourceLimiter{per: per, burst: burst, max: max, all: rate.NewLimiter(total, totalBurst),
		m: make(map[netip.AddrPort]*list.Element), order: list.New()}
}

// allow reports whether one more frame from src may be looked at now.
func (l *sourceLimiter) allow(src netip.AddrPort, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b *sourceBucket
	if e := l.m[src]; e != nil {
		l.order.MoveToFront(e)
		b = e.Value.(*sourceBucket)
	} else {
		if len(l.m) >= l.max {
			old := l.order.Back()
			l.order.Remove(old)
			delete(l.m, old.Value.(*sourceBucket).src)
		}
		b = &sourceBucket{src: src, lim: rate.NewLimiter(l.per, l.burst)}
		l.m[src] = l.order.PushFront(b)
	}
	return b.lim.AllowN(now, 1) && l.all.AllowN(now, 1)
}

// Limits on frames from the network before any signature check. A peer
// sends a handful of admission frames per join (a HELLO a second while
// joining, one per 2 s when asked, an ACK per HELLO), so 10 a second per
// source leaves room; the total bounds the signature checks a flood from
// many (spoofed) sources can cause to 2,000 a second, about a tenth of a
// core. Peer frames come from admitted peers inside WireGuard: a task
// start or end per frame, with the same allowance per peer.
const (
	ctrlPerSource  = 10
	ctrlBurst      = 20
	ctrlTotal      = 2000
	ctrlTotalBurst = 4000
	maxSources     = 4096
)
