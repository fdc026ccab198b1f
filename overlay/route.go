package overlay

import (
	"crypto/subtle"
	"fmt"
	"net/netip"
	"sync"

	"github.com/agent6/agent6/identity"
)

// The filter's part in path control: the source encapsulates the flows
// Via sends through waypoints (filterOut), a waypoint stamps and
// forwards (forward), the destination checks what arrives (arrival).

// dropNone is the verdict of a check that refuses nothing.
const dropNone = DropReason(255)

// srv6State is what an SRv6 packet's processing needs besides the packet:
// pooled, so that the packet path does not allocate.
type srv6State struct {
	v   srv6View
	s   potScratch
	fwd []readyPkt // packets forwarded in this batch
}

var srv6Pool = sync.Pool{New: func() any { return new(srv6State) }}

// fwdBufSize is the size of the pooled buffers forwarded packets are
// copied into; larger packets get a buffer of their own.
const fwdBufSize = 2048

type fwdBuf [fwdBufSize]byte

var fwdPool = sync.Pool{New: func() any { return new(fwdBuf) }}

// readyPkt is a packet waiting in the ready queue: held packets of the
// local stack (filtered again when taken) or packets this node forwards
// as a waypoint (sent as they are).
type readyPkt struct {
	pkt     []byte
	transit bool
	pooled  *fwdBuf // returned to fwdPool once sent
}

// maxForwardQueue bounds the forwarded packets waiting for the reader.
const maxForwardQueue = 4096

// ResetVia makes every flow ask Via again at its next packet: call it
// when the answers may have changed (policy reloaded, a waypoint died or
// came back). Safe for concurrent use.
func (f *Filter) ResetVia() { f.pathGen.Add(1) }

// SetViaOverride sends this node's flows to dst through wps, in order
// (none: directly), whatever Via says, established flows from their
// next packet on: a hook for tests and diagnosis, which is how a test
// makes a source bypass its waypoints and sees the destination refuse it.
// Never needed in production. Safe for concurrent use.
func (f *Filter) SetViaOverride(dst netip.Addr, wps []Waypoint) {
	f.localMu.Lock()
	defer f.localMu.Unlock()
	next := make(map[[16]byte][]Waypoint)
	if cur := f.overrides.Load(); cur != nil {
		for k, v := range *cur {
			next[k] = v
		}
	}
	next[dst.As16()] = append([]Waypoint{}, wps...)
	f.overrides.Store(&next)
	f.ResetVia()
}

// ClearViaOverride removes dst's override.
func (f *Filter) ClearViaOverride(dst netip.Addr) {
	f.localMu.Lock()
	defer f.localMu.Unlock()
	cur := f.overrides.Load()
	if cur == nil {
		return
	}
	next := make(map[[16]byte][]Waypoint)
	for k, v := range *cur {
		if k != dst.As16() {
			next[k] = v
		}
	}
	if len(next) == 0 {
		f.overrides.Store(nil)
	} else {
		f.overrides.Store(&next)
	}
	f.ResetVia()
}

// setPeerAddrs records that pub holds the /128s among prefixes (its own
// address and its tasks'): a waypoint looks up the destination's key
// there, a destination the waypoints'.
func (f *Filter) setPeerAddrs(pub identity.WGPublicKey, prefixes []netip.Prefix) {
	f.peerMu.Lock()
	defer f.peerMu.Unlock()
	next := make(map[[16]byte]identity.WGPublicKey)
	if cur := f.peers.Load(); cur != nil {
		for a, k := range *cur {
			if !k.Equal(pub) {
				next[a] = k
			}
		}
	}
	for _, p := range prefixes {
		if p.Addr().Is6() && p.Bits() == 128 {
			next[p.Addr().As16()] = pub
		}
	}
	f.peers.Store(&next)
}

func (f *Filter) peerKey(addr []byte) (identity.WGPublicKey, bool) {
	m := f.peers.Load()
	if m == nil || len(addr) != 16 {
		return identity.WGPublicKey{}, false
	}
	k, ok := (*m)[[16]byte(addr)]
	return k, ok
}

// outPath returns the flow's outbound route, asking Via (or an
// override) if the flow has none for this generation. The caller holds
// f.flows.mu.RLock; it is released while Via is asked.
func (f *Filter) outPath(fl *flow, info *packetInfo, gen uint64) *outRoute {
	if fl != nil {
		if r := fl.out.Load(); r != nil && r.gen == gen {
			return r
		}
	}
	f.flows.mu.RUnlock()
	r := f.newOutRoute(info, gen)
	f.flows.mu.RLock()
	if fl != nil {
		fl.out.Store(r)
	}
	return r
}

func (f *Filter) newOutRoute(info *packetInfo, gen uint64) *outRoute {
	r := &outRoute{gen: gen}
	t := tupleOf(info)
	var wps []Waypoint
	var err error
	if w, ok := f.overridden(info.dst); ok {
		wps = w
	} else if f.cfg.Via != nil {
		wps, err = f.cfg.Via.Outbound(t)
	}
	if err == nil {
		err = checkWaypoints(wps, info)
	}
	if err != nil {
		r.refuse = true
		if f.logDue(DropNoWaypoint) {
			f.log.Warn("flow refused", "reason", DropNoWaypoint.String(), "src", t.Src, "dst", t.Dst, "proto", t.Proto, "err", err)
		}
		return r
	}
	if len(wps) == 0 {
		return r
	}
	addrs := make([][16]byte, len(wps))
	for i, w := range wps {
		addrs[i] = w.Addr.As16()
	}
	if _, ok := f.peerKey(addrs[0][:]); !ok {
		// WireGuard would drop every packet: fail closed, and say so.
		r.refuse = true
		if f.logDue(DropNoWaypoint) {
			f.log.Warn("flow refused", "reason", DropNoWaypoint.String(), "src", t.Src, "dst", t.Dst, "proto", t.Proto, "err", "first waypoint "+wps[0].Addr.String()+" is not a peer")
		}
		return r
	}
	r.hdr = make([]byte, srv6Overhead(len(wps)))
	writeSRv6Header(r.hdr, info.src, info.dst, addrs)
	r.wps = len(wps)
	// The largest inner packet that fits the overlay MTU once
	// encapsulated, but never below IPv6's minimum: a 1280-byte packet is
	// sent even if its encapsulation exceeds the MTU (WireGuard carries
	// it; the underlay fragments the datagram if it must), as RFC 2473
	// §7.1 has a tunnel entry point do.
	r.max = max(f.mtu-len(r.hdr), minMTU)
	r.mss = uint16(r.max - ipv6HeaderLen - 20)
	r.seq.init()
	return r
}

// overridden reports whether dst has an override (possibly "direct").
func (f *Filter) overridden(dst [16]byte) ([]Waypoint, bool) {
	ov := f.overrides.Load()
	if ov == nil {
		return nil, false
	}
	w, ok := (*ov)[dst]
	return w, ok
}

// checkWaypoints refuses a path the filter cannot build: too long, a
// waypoint that is not an overlay address or not its key's, the flow's
// own ends, or a waypoint twice.
func checkWaypoints(wps []Waypoint, info *packetInfo) error {
	if len(wps) > MaxWaypoints {
		return fmt.Errorf("overlay: %d waypoints, at most %d", len(wps), MaxWaypoints)
	}
	for i, w := range wps {
		a := w.Addr.As16()
		switch {
		case !w.Addr.Is6() || !overlayAddr(&a):
			return fmt.Errorf("overlay: waypoint %s is not an overlay address", w.Addr)
		case !w.Key.IsZero() && !w.Key.Owns(w.Addr):
			return fmt.Errorf("overlay: waypoint %s is not key %s's address", w.Addr, w.Key.ShortString())
		case a == info.src || a == info.dst:
			return fmt.Errorf("overlay: waypoint %s is an end of the flow", w.Addr)
		}
		for _, o := range wps[:i] {
			if o.Addr == w.Addr {
				return fmt.Errorf("overlay: waypoint %s twice in the path", w.Addr)
			}
		}
	}
	return nil
}

// inPath returns the waypoints the flow must have crossed to arrive here,
// asking Via if the flow has no answer for this generation. The caller
// holds f.flows.mu.RLock; it is released while Via is asked.
func (f *Filter) inPath(fl *flow, info *packetInfo, gen uint64) *inRoute {
	if fl != nil {
		if r := fl.in.Load(); r != nil && r.gen == gen {
			return r
		}
	}
	f.flows.mu.RUnlock()
	wps := f.cfg.Via.Inbound(tupleOf(info))
	f.flows.mu.RLock()
	r := f.newInRoute(wps, gen)
	if fl != nil {
		fl.in.Store(r)
	}
	return r
}

// newInRoute keeps Via's inbound answer, with the transit-proof keys
// this node shares with each waypoint.
func (f *Filter) newInRoute(wps []Waypoint, gen uint64) *inRoute {
	r := &inRoute{gen: gen}
	for _, w := range wps {
		key := w.Key
		if !key.IsZero() && !key.Owns(w.Addr) {
			key = identity.WGPublicKey{} // not this waypoint's: its stamps cannot verify with it
		}
		var pk *potKey
		if !key.IsZero() {
			pk, _ = f.keys.key(key, roleDestination)
		}
		r.need = append(r.need, w.Addr.As16())
		r.keys = append(r.keys, key)
		r.pot = append(r.pot, pk)
	}
	return r
}

// arrival checks a packet arriving at this node, its destination: one
// that came through waypoints (v set, the SRv6 packet whose inner packet
// info describes) must have come from the last of them, crossed the
// waypoints Via requires in their order, carry a valid stamp from each
// and a sequence number not seen before; one that came directly must not
// need any. The caller holds f.flows.mu.RLock.
func (f *Filter) arrival(fl *flow, info *packetInfo, v *srv6View, sr *srv6State, gen uint64) DropReason {
	var need *inRoute
	if f.cfg.Via != nil {
		need = f.inPath(fl, info, gen)
	}
	if v == nil {
		if need != nil && len(need.need) > 0 {
			return DropWaypointBypassed
		}
		return dropNone
	}
	k := v.waypoints()
	prev := info.src[:]
	if k > 0 {
		prev = v.waypoint(k - 1)
	}
	if string(v.pkt[8:24]) != string(prev) {
		return DropTransitProof // not from the hop the segment list says it crossed last
	}
	if need != nil {
		if r := comparePath(need.need, v); r != dropNone {
			return r
		}
	}
	if !f.verifyChain(&sr.s, v, need) {
		return DropTransitProof
	}
	if fl == nil {
		return DropTransitProof // no entry, no replay window: fail closed
	}
	w := fl.replay.Load()
	if w == nil {
		fl.replay.CompareAndSwap(nil, new(replayWindow))
		w = fl.replay.Load()
	}
	if !w.accept(v.seq()) {
		return DropTransitProof
	}
	return dropNone
}

// comparePath checks that the waypoints in need appear in the packet's
// path in that order (others may be crossed too): one missing is
// waypoint_bypassed, all there in another order waypoint_order.
func comparePath(need [][16]byte, v *srv6View) DropReason {
	last := -1
	order := true
	for _, w := range need {
		at := -1
		for j := range v.waypoints() {
			if string(v.waypoint(j)) == string(w[:]) {
				at = j
				break
			}
		}
		if at < 0 {
			return DropWaypointBypassed
		}
		if at < last {
			order = false
		}
		last = at
	}
	if !order {
		return DropWaypointOrder
	}
	return dropNone
}

// verifyChain checks the stamps of v with the keys of the waypoints it
// names: from Via's answer, else from the peers (whose addresses the
// device derived from their keys).
func (f *Filter) verifyChain(s *potScratch, v *srv6View, need *inRoute) bool {
	var want [stampLen]byte
	var prev []byte
	for j := range v.waypoints() {
		addr := v.waypoint(j)
		var k *potKey
		if need != nil {
			for i, a := range need.need {
				if string(a[:]) == string(addr) {
					k = need.pot[i]
					break
				}
			}
		}
		if k == nil {
			pub, ok := f.peerKey(addr)
			if !ok {
				return false
			}
			var err error
			if k, err = f.keys.key(pub, roleDestination); err != nil {
				return false
			}
		}
		k.stamp(s, v, j, prev, want[:])
		got := v.stamp(j)
		if subtle.ConstantTimeCompare(want[:], got) != 1 {
			return false
		}
		prev = got
	}
	return true
}

// forward is a waypoint's End behaviour for the SRv6 packet sr.v, whose
// active segment is this node: check that it came from the previous hop's
// WireGuard session with the earlier stamps in place, ask the inspection
// hook, stamp it, and queue it, with this node as outer source and the
// next segment as destination, to go out through WireGuard. The caller
// holds f.flows.mu.RLock; it is released while the hook is asked.
func (f *Filter) forward(local *localSet, sr *srv6State, now int64) {
	v := &sr.v
	t := f.cfg.Transit
	if t == nil || string(v.pkt[24:40]) != string(local.primary[:]) {
		f.dropFlow(DropNotWaypoint, &v.info)
		return
	}
	j := v.hop()
	prevAddr, prevStamp := v.info.src[:], []byte(nil)
	if j > 0 {
		prevAddr, prevStamp = v.waypoint(j-1), v.stamp(j-1)
	}
	if string(v.pkt[8:24]) != string(prevAddr) {
		f.dropFlow(DropTransitProof, &v.info) // the previous hop is not who sent it
		return
	}
	for i := range v.waypoints() {
		if isZero(v.stamp(i)) != (i >= j) {
			f.dropFlow(DropTransitProof, &v.info) // an earlier stamp missing, or this one or a later one filled
			return
		}
	}
	if v.pkt[7] <= 1 {
		f.dropFlow(DropBadSRH, &v.info) // hop limit exhausted: a loop
		return
	}
	next := v.segment(v.sl - 1)
	tkey := flowKey{local: v.info.src, remote: v.info.dst, lport: v.info.sport, rport: v.info.dport, proto: v.info.proto}
	tf, rev := f.transitFlows.get(tkey)
	// The next hop must be a peer and the destination's key known: once
	// per flow and direction, then from the flow's entry.
	var key *potKey
	if tf != nil {
		if h := tf.hop[dir(rev)].Load(); h != nil && string(h.next[:]) == string(next) {
			key = h.key
		}
	}
	if key == nil {
		dstKey, ok := f.peerKey(v.segment(0))
		_, nextOK := f.peerKey(next)
		if !ok || !nextOK || string(next) == string(local.primary[:]) {
			f.dropFlow(DropNotWaypoint, &v.info) // cannot stamp for the destination, or no session to the next hop
			return
		}
		var err error
		if key, err = f.keys.key(dstKey, roleWaypoint); err != nil {
			f.dropFlow(DropNotWaypoint, &v.info)
			return
		}
		if tf == nil {
			tf, rev = f.transitFlows.insert(newTransitFlow(tkey, v, next, now))
		}
		if tf != nil {
			tf.hop[dir(rev)].Store(&transitHop{next: [16]byte(next), key: key})
		}
	}

	size := uint64(len(v.pkt))
	if t.Inspector != nil {
		if tf == nil {
			f.dropFlow(DropInspection, &v.info) // table full: no verdict can be kept
			return
		}
		if !f.inspect(t.Inspector, tf, rev, v, next) {
			tf.dropped.Add(1)
			f.dropFlow(DropInspection, &v.info)
			return
		}
	}
	var rp readyPkt
	if len(v.pkt) <= fwdBufSize {
		rp.pooled = fwdPool.Get().(*fwdBuf)
		rp.pkt = rp.pooled[:len(v.pkt)]
	} else {
		rp.pkt = make([]byte, len(v.pkt))
	}
	rp.transit = true
	out := rp.pkt
	copy(out, v.pkt)
	key.stamp(&sr.s, v, j, prevStamp, out[v.stamps+stampLen*j:])
	out[ipv6HeaderLen+3] = byte(v.sl - 1)
	copy(out[8:24], local.primary[:])
	copy(out[24:40], next)
	out[7]--
	sr.fwd = append(sr.fwd, rp)
	if tf != nil {
		tf.last.Store(now)
		if rev {
			tf.revPackets.Add(1)
			tf.revBytes.Add(size)
		} else {
			tf.packets.Add(1)
			tf.bytes.Add(size)
		}
	}
	f.forwarded.Add(1)
	f.forwardedBytes.Add(size)
}

// newTransitFlow makes the transit entry of v's inner flow.
func newTransitFlow(key flowKey, v *srv6View, next []byte, now int64) *transitFlow {
	tf := &transitFlow{key: key, start: now, prev: [16]byte(v.pkt[8:24]), next: [16]byte(next), pos: uint8(v.hop()), hops: uint8(v.waypoints())}
	tf.last.Store(now)
	return tf
}

// dir indexes a transit flow's per-direction state.
func dir(rev bool) int {
	if rev {
		return 1
	}
	return 0
}

// inspect asks the hook about the packet of tf and reports whether to
// forward it. A flow's verdict is asked once (InspectFlow); VerdictPass
// and VerdictDrop settle the flow, the others ask about each packet
// (InspectPacket), whose answer settles the flow in turn if it is
// VerdictPass or VerdictDrop; a drop is final. An unknown verdict drops.
// The caller holds f.flows.mu.RLock; it is released while the hook runs.
func (f *Filter) inspect(insp Inspector, tf *transitFlow, rev bool, v *srv6View, next []byte) bool {
	if tf.asked.Load() {
		switch Verdict(tf.verdict.Load()) {
		case VerdictPass:
			return true
		case VerdictDrop:
			return false
		}
	}
	info := TransitFlow{Flow: tf.tuple(), Reverse: rev, Prev: netip.AddrFrom16([16]byte(v.pkt[8:24])), Next: netip.AddrFrom16([16]byte(next)),
		Hop: v.hop(), Hops: v.waypoints()}
	f.flows.mu.RUnlock()
	defer f.flows.mu.RLock()
	first := false
	tf.once.Do(func() {
		tf.verdict.Store(uint32(min(insp.InspectFlow(info), VerdictDrop)))
		tf.asked.Store(true)
		first = true
	})
	switch Verdict(tf.verdict.Load()) {
	case VerdictPass:
		return true
	case VerdictDrop:
		return false
	case VerdictDropPacket:
		if first {
			return false
		}
	}
	got := min(insp.InspectPacket(info, v.pkt[v.inner:]), VerdictDrop)
	switch got {
	case VerdictDrop:
		tf.verdict.Store(uint32(VerdictDrop))
	case VerdictPass:
		for {
			cur := tf.verdict.Load()
			if cur == uint32(VerdictDrop) || tf.verdict.CompareAndSwap(cur, uint32(VerdictPass)) {
				break
			}
		}
	}
	return got == VerdictPass || got == VerdictInspect
}

// sendTransit queues forwarded packets to go out on the next Read, up to
// maxForwardQueue waiting; the rest are dropped as forward_overflow.
func (f *Filter) sendTransit(pkts []readyPkt) {
	f.readyMu.Lock()
	room := maxForwardQueue - f.readyTransit
	if room < 0 {
		room = 0
	}
	take := min(room, len(pkts))
	f.ready = append(f.ready, pkts[:take]...)
	f.readyTransit += take
	f.readyN.Store(int32(len(f.ready)))
	f.readyMu.Unlock()
	for _, p := range pkts[take:] {
		f.drops[DropForwardOverflow].Add(1)
		if p.pooled != nil {
			fwdPool.Put(p.pooled)
		}
	}
	if take < len(pkts) && f.logDue(DropForwardOverflow) {
		f.log.Warn("packet dropped", "reason", DropForwardOverflow.String(), "total", f.drops[DropForwardOverflow].Load())
	}
	f.wake()
}

// dropFlow counts a refused packet and logs it with its flow, at most
// once per reason every dropLogEvery.
func (f *Filter) dropFlow(r DropReason, info *packetInfo) {
	n := f.drops[r].Add(1)
	if !f.logDue(r) {
		return
	}
	t := tupleOf(info)
	f.log.Warn("packet dropped", "reason", r.String(), "src", t.Src, "dst", t.Dst, "proto", t.Proto, "total", n)
}

func isZero(b []byte) bool {
	var acc byte
	for _, c := range b {
		acc |= c
	}
	return acc == 0
}
