package overlay

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agent6/agent6/identity"
)

// Receipt is a waypoint's signed account of one flow it forwarded: which
// flow, between which agents, through which hops, how much, and what it
// checked. The audit log records it.
type Receipt struct {
	// Waypoint is this node's address.
	Waypoint netip.Addr
	// Flow is the inner flow, in the direction of its first packet here:
	// its source and destination are the agents at either end.
	Flow Tuple
	// Prev and Next are the hops that direction came from and went to;
	// Hop is this waypoint's position in its path, Hops the waypoints in
	// it.
	Prev, Next netip.Addr
	Hop, Hops  int
	Start, End time.Time
	// Packets and Bytes were forwarded in the flow's direction,
	// RevPackets and RevBytes the other way. Each forwarded packet came
	// from its previous hop's WireGuard session, had its earlier stamps in
	// place and was stamped here.
	Packets, Bytes       uint64
	RevPackets, RevBytes uint64
	// Dropped counts the flow's packets the inspection hook dropped.
	Dropped uint64
	// Verdict is the flow's last verdict.
	Verdict Verdict
	// Signature is the waypoint agent's Ed25519 signature of
	// SignedBytes; empty when the node signs no receipts.
	Signature []byte
}

const receiptLabel = "agent6 receipt v1\x00"

// SignedBytes returns the receipt's canonical encoding, the message its
// signature covers: the label "agent6 receipt v1\0", a version byte (1),
// then the fields in order, addresses as 16 bytes, times as Unix
// nanoseconds and counters as 8 bytes, big-endian.
func (r *Receipt) SignedBytes() []byte {
	b := make([]byte, 0, len(receiptLabel)+1+16*5+2+2+1+2+16+48+1)
	b = append(b, receiptLabel...)
	b = append(b, 1)
	a16 := func(a netip.Addr) {
		v := a.As16()
		if !a.IsValid() {
			v = [16]byte{}
		}
		b = append(b, v[:]...)
	}
	a16(r.Waypoint)
	a16(r.Flow.Src.Addr())
	a16(r.Flow.Dst.Addr())
	b = binary.BigEndian.AppendUint16(b, r.Flow.Src.Port())
	b = binary.BigEndian.AppendUint16(b, r.Flow.Dst.Port())
	b = append(b, r.Flow.Proto)
	a16(r.Prev)
	a16(r.Next)
	b = append(b, byte(r.Hop), byte(r.Hops))
	b = binary.BigEndian.AppendUint64(b, uint64(r.Start.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, uint64(r.End.UnixNano()))
	for _, v := range []uint64{r.Packets, r.Bytes, r.RevPackets, r.RevBytes, r.Dropped} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return append(b, byte(r.Verdict))
}

// Verify reports whether the receipt carries pub's valid signature.
func (r *Receipt) Verify(pub identity.PublicKey) bool {
	return len(r.Signature) > 0 && pub.Verify(r.SignedBytes(), r.Signature)
}

// transitFlow is one flow this node forwards as a waypoint, both
// directions in one entry, keyed by the direction first seen.
type transitFlow struct {
	key        flowKey // local = inner source, remote = inner destination
	start      int64
	last       atomic.Int64
	prev, next [16]byte // of the first direction
	pos, hops  uint8    // this waypoint's position in the first direction's path, and its waypoints
	hop        [2]atomic.Pointer[transitHop]

	once                 sync.Once     // asks InspectFlow
	verdict              atomic.Uint32 // Verdict, once asked is set
	asked                atomic.Bool   // InspectFlow answered
	packets, bytes       atomic.Uint64
	revPackets, revBytes atomic.Uint64
	dropped              atomic.Uint64
}

// transitHop is what a waypoint checked of one direction of a flow: the
// next hop is a peer, and key is the one it shares with the destination.
type transitHop struct {
	next [16]byte
	key  *potKey
}

// transitTable holds the flows this node forwards.
type transitTable struct {
	mu  sync.RWMutex // guards m
	m   map[flowKey]*transitFlow
	max int
}

func (t *transitTable) init(max int) {
	t.m = make(map[flowKey]*transitFlow)
	t.max = max
}

// get returns the entry of the flow key belongs to, and whether key is
// its reverse direction; nil if it has none.
func (t *transitTable) get(key flowKey) (*transitFlow, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if tf := t.m[key]; tf != nil {
		return tf, false
	}
	rev := flowKey{local: key.remote, remote: key.local, lport: key.rport, rport: key.lport, proto: key.proto}
	if tf := t.m[rev]; tf != nil {
		return tf, true
	}
	return nil, false
}

// insert adds tf unless the flow has an entry (that one is returned) or
// the table is full (nil).
func (t *transitTable) insert(tf *transitFlow) (*transitFlow, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old := t.m[tf.key]; old != nil {
		return old, false
	}
	rev := flowKey{local: tf.key.remote, remote: tf.key.local, lport: tf.key.rport, rport: tf.key.lport, proto: tf.key.proto}
	if old := t.m[rev]; old != nil {
		return old, true
	}
	if len(t.m) >= t.max {
		return nil, false
	}
	t.m[tf.key] = tf
	return tf, false
}

func (t *transitTable) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.m)
}

// expire removes and returns the flows last seen before cutoff, or all.
func (t *transitTable) expire(cutoff int64, all bool) []*transitFlow {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*transitFlow
	for k, tf := range t.m {
		if all || tf.last.Load() < cutoff {
			out = append(out, tf)
			delete(t.m, k)
		}
	}
	return out
}

func (tf *transitFlow) tuple() Tuple {
	return Tuple{
		Src:   netip.AddrPortFrom(netip.AddrFrom16(tf.key.local), tf.key.lport),
		Dst:   netip.AddrPortFrom(netip.AddrFrom16(tf.key.remote), tf.key.rport),
		Proto: tf.key.proto,
	}
}

// TransitStats is one flow this node forwards as a waypoint.
type TransitStats struct {
	Flow                 Tuple
	Prev, Next           netip.Addr
	Start, Last          time.Time
	Packets, Bytes       uint64
	RevPackets, RevBytes uint64
	Dropped              uint64
	Verdict              Verdict
}

// TransitFlows returns a snapshot of the flows this node forwards as a
// waypoint, with what it forwarded of each.
func (f *Filter) TransitFlows() []TransitStats {
	f.transitFlows.mu.RLock()
	defer f.transitFlows.mu.RUnlock()
	out := make([]TransitStats, 0, len(f.transitFlows.m))
	for _, tf := range f.transitFlows.m {
		out = append(out, TransitStats{
			Flow: tf.tuple(), Prev: netip.AddrFrom16(tf.prev), Next: netip.AddrFrom16(tf.next),
			Start: f.flows.base.Add(time.Duration(tf.start)), Last: f.flows.base.Add(time.Duration(tf.last.Load())),
			Packets: tf.packets.Load(), Bytes: tf.bytes.Load(), RevPackets: tf.revPackets.Load(), RevBytes: tf.revBytes.Load(),
			Dropped: tf.dropped.Load(), Verdict: Verdict(tf.verdict.Load()),
		})
	}
	return out
}

// receipt makes the (signed) receipt of an ended transit flow.
func (f *Filter) receipt(tf *transitFlow, end time.Time) Receipt {
	r := Receipt{
		Waypoint:   netip.AddrFrom16(f.local.Load().primary),
		Flow:       tf.tuple(),
		Prev:       netip.AddrFrom16(tf.prev),
		Next:       netip.AddrFrom16(tf.next),
		Hop:        int(tf.pos),
		Hops:       int(tf.hops),
		Start:      f.flows.base.Add(time.Duration(tf.start)),
		End:        end,
		Packets:    tf.packets.Load(),
		Bytes:      tf.bytes.Load(),
		RevPackets: tf.revPackets.Load(),
		RevBytes:   tf.revBytes.Load(),
		Dropped:    tf.dropped.Load(),
		Verdict:    Verdict(tf.verdict.Load()),
	}
	if f.cfg.Transit.Sign != nil {
		r.Signature = f.cfg.Transit.Sign(r.SignedBytes())
	}
	return r
}

// endTransit hands the receipts of ended transit flows to OnReceipt.
func (f *Filter) endTransit(ended []*transitFlow) {
	t := f.cfg.Transit
	if t == nil || t.OnReceipt == nil {
		return
	}
	for _, tf := range ended {
		t.OnReceipt(f.receipt(tf, f.flows.base.Add(time.Duration(tf.last.Load()))))
	}
}
