package overlay

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// flowKey names a flow from this node's side: local and remote address,
// port and protocol. It is comparable and allocation-free as a map key.
type flowKey struct {
	local, remote [16]byte
	lport, rport  uint16
	proto         uint8
}

// flow holds one flow's counters. Its fields are updated atomically under
// the table's read lock.
type flow struct {
	key       flowKey
	start     int64 // table clock, nanoseconds
	last      atomic.Int64
	txPackets atomic.Uint64
	txBytes   atomic.Uint64
	rxPackets atomic.Uint64
	rxBytes   atomic.Uint64

	// Path control (Via set): the cached answers for each direction,
	// and the window of proof-of-transit sequence numbers accepted.
	out    atomic.Pointer[outRoute]
	in     atomic.Pointer[inRoute]
	replay atomic.Pointer[replayWindow]
}

func (fl *flow) count(now int64, size int, out bool) {
	if fl.last.Load() != now {
		fl.last.Store(now)
	}
	if out {
		fl.txPackets.Add(1)
		fl.txBytes.Add(uint64(size))
	} else {
		fl.rxPackets.Add(1)
		fl.rxBytes.Add(uint64(size))
	}
}

// Flow is a snapshot of one flow, seen from this node.
type Flow struct {
	Local, Remote      netip.AddrPort
	Proto              uint8
	Start, Last        time.Time
	TxPackets, TxBytes uint64
	RxPackets, RxBytes uint64
}

// flowTable maps flow keys to counters.
type flowTable struct {
	base time.Time // the table clock counts nanoseconds since base

	mu  sync.RWMutex // guards m; held for reading across a packet batch
	m   map[flowKey]*flow
	max int
}

func (t *flowTable) init(max int) {
	t.base = time.Now()
	t.m = make(map[flowKey]*flow)
	t.max = max
}

// now returns the table clock (monotonic). Called once per batch.
func (t *flowTable) now() int64 { return int64(time.Since(t.base)) }

// insert adds a flow for key unless one exists or the table is full (nil).
func (t *flowTable) insert(key flowKey, now int64) *flow {
	t.mu.Lock()
	defer t.mu.Unlock()
	if fl := t.m[key]; fl != nil {
		return fl
	}
	if len(t.m) >= t.max {
		return nil
	}
	fl := &flow{key: key, start: now}
	fl.last.Store(now)
	t.m[key] = fl
	return fl
}

func (t *flowTable) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.m)
}

func (t *flowTable) snapshot() []Flow {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]Flow, 0, len(t.m))
	for _, fl := range t.m {
		out = append(out, t.export(fl))
	}
	return out
}

// expire removes and returns the flows last seen before cutoff, or all of
// them.
func (t *flowTable) expire(cutoff int64, all bool) []Flow {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Flow
	for k, fl := range t.m {
		if all || fl.last.Load() < cutoff {
			out = append(out, t.export(fl))
			delete(t.m, k)
		}
	}
	return out
}

func (t *flowTable) export(fl *flow) Flow {
	return Flow{
		Local:     netip.AddrPortFrom(netip.AddrFrom16(fl.key.local), fl.key.lport),
		Remote:    netip.AddrPortFrom(netip.AddrFrom16(fl.key.remote), fl.key.rport),
		Proto:     fl.key.proto,
		Start:     t.base.Add(time.Duration(fl.start)),
		Last:      t.base.Add(time.Duration(fl.last.Load())),
		TxPackets: fl.txPackets.Load(),
		TxBytes:   fl.txBytes.Load(),
		RxPackets: fl.rxPackets.Load(),
		RxBytes:   fl.rxBytes.Load(),
	}
}
