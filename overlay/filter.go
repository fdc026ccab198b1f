package overlay

import (
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/agent6/agent6/identity"
)

// DropReason says why the filter refused a packet.
type DropReason uint8

const (
	// DropMalformed: not a whole, well-formed IPv6 packet.
	DropMalformed DropReason = iota
	// DropNotOverlay: link-local, multicast or other non-overlay traffic
	// the kernel emits on a TUN; expected, so counted but not logged.
	DropNotOverlay
	// DropSpoofedSource: an outbound packet whose source is not one of this
	// node's addresses.
	DropSpoofedSource
	// DropForeignDestination: an inbound packet not addressed to this node.
	DropForeignDestination
	// DropPeerSpoofedSource: a peer sent a packet whose source is not an
	// address its key holds; WireGuard's cryptokey routing refused it.
	DropPeerSpoofedSource
	// DropUndelivered: a task's packet held for a peer that never
	// acknowledged the task's delegation (or too many were held).
	DropUndelivered
	// DropTaskEnded: a packet from or to a task that has ended, such as
	// the tail of its last connections; expected, so not logged.
	DropTaskEnded
	// DropNotAdmitted: a packet held for a peer being admitted that was
	// not admitted in time (or too many were held).
	DropNotAdmitted
	// DropBadSRH: a malformed SRv6 packet from a peer, or one the local
	// stack tried to send (waypoints are the filter's to choose).
	DropBadSRH
	// DropNoWaypoint: a packet of a flow that must cross waypoints none of
	// which is reachable (Via.Outbound refused it): the flow fails
	// closed, and the local stack is told.
	DropNoWaypoint
	// DropWaypointBypassed: a packet of a flow that must cross waypoints
	// arrived directly, or without one of them.
	DropWaypointBypassed
	// DropWaypointOrder: a packet crossed the required waypoints in
	// another order.
	DropWaypointOrder
	// DropTransitProof: a packet's proof of transit failed: a stamp
	// missing, forged or out of place, a replayed sequence number, or a
	// hop that is not the one its segment list names.
	DropTransitProof
	// DropNotWaypoint: a packet asked this node to forward it, which it
	// cannot: it is no waypoint, or the next segment or the destination
	// is not its peer.
	DropNotWaypoint
	// DropInspection: a waypoint's inspection hook dropped the packet.
	DropInspection
	// DropTooBig: a packet too large to cross its waypoints once
	// encapsulated; the local stack got ICMPv6 Packet Too Big.
	DropTooBig
	// DropForwardOverflow: a waypoint's queue of packets to forward was
	// full.
	DropForwardOverflow
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{
	DropMalformed:          "malformed",
	DropNotOverlay:         "not_overlay",
	DropSpoofedSource:      "spoofed_source",
	DropForeignDestination: "foreign_destination",
	DropPeerSpoofedSource:  "peer_spoofed_source",
	DropUndelivered:        "task_undelivered",
	DropTaskEnded:          "task_ended",
	DropNotAdmitted:        "not_admitted",
	DropBadSRH:             "bad_srh",
	DropNoWaypoint:         "no_waypoint",
	DropWaypointBypassed:   "waypoint_bypassed",
	DropWaypointOrder:      "waypoint_order",
	DropTransitProof:       "transit_proof",
	DropNotWaypoint:        "not_waypoint",
	DropInspection:         "inspection",
	DropTooBig:             "too_big",
	DropForwardOverflow:    "forward_overflow",
}

func (r DropReason) String() string {
	if r < numDropReasons {
		return dropReasonNames[r]
	}
	return "unknown"
}

// FilterStats are the filter's counters since it was made.
type FilterStats struct {
	InPackets, InBytes   uint64 // delivered to this node
	OutPackets, OutBytes uint64 // sent by this node
	ActiveFlows          int
	Untracked            uint64            // packets passed while the flow table was full
	Held                 uint64            // packets held: a task's until the peer holds its delegation, any to a peer until it is admitted
	Drops                map[string]uint64 // by DropReason name
	// Forwarded and ForwardedBytes count what this node forwarded as a
	// waypoint, TransitFlows the flows it forwards now.
	Forwarded, ForwardedBytes uint64
	TransitFlows              int
	// ICMPErrors counts the ICMPv6 errors sent to the local stack (Packet
	// Too Big, administratively prohibited), ICMPLimited those not sent:
	// over the rate limit, or with the queue to the local stack full.
	ICMPErrors, ICMPLimited uint64
}

// FilterConfig configures a Filter. Zero values are the defaults.
type FilterConfig struct {
	// Local is this node's address: the only source it may send from and
	// the only destination it accepts.
	Local netip.Addr
	// MaxFlows bounds the flow table (default 65536). When it is full, new
	// flows pass untracked and are counted in FilterStats.Untracked.
	MaxFlows int
	// FlowIdle is how long a flow may stay silent before it is ended
	// (default 2 minutes).
	FlowIdle time.Duration
	// OnFlowEnd, if set, is called with each flow that ends (idle or at
	// Close), from the filter's sweeper goroutine. It must not block.
	OnFlowEnd func(Flow)
	// OnHold, if set, is called when a task's first packet to a peer is
	// held (see AddTask): the peer must be given the task's delegation,
	// then Release (or Discard) called. It must not block.
	OnHold func(task, dst netip.Addr)
	// Via, if set, says which flows must cross waypoints: the source
	// encapsulates them in SRv6, the destination refuses what did not
	// cross them. Nil: no path control, and no cost per packet.
	Via Via
	// Transit, if set, makes this node a waypoint. Nil refuses to forward
	// (not_waypoint).
	Transit *Transit
	// Logger receives rate-limited drop reports. Nil discards.
	Logger *slog.Logger
}

// Filter is the Agent6 packet filter: a tun.Device that wraps the TUN
// backend, sits between it and the WireGuard device, and sees every packet.
// Outbound (Read, from the local stack towards WireGuard) it refuses packets
// whose source is not this node; inbound (Write, from WireGuard towards the
// local stack) it refuses packets not addressed to this node. WireGuard's
// cryptokey routing has already refused inbound packets whose source does
// not belong to the sending peer's key. Every accepted packet is counted
// against its flow.
//
// Read and Write do not allocate for packets of a known flow. Read is called
// from one goroutine; Write may be called concurrently.
type Filter struct {
	inner tun.Device
	cfg   FilterConfig
	local atomic.Pointer[localSet]
	log   *slog.Logger

	flows        flowTable
	transitFlows transitTable
	mtu          int

	localMu   sync.Mutex // serialises changes to local and overrides
	overrides atomic.Pointer[map[[16]byte][]Waypoint]
	pathGen   atomic.Uint64 // bumped by ResetVia: cached routes are stale

	keys   keyring    // transit-proof keys; set by the Device before packets flow
	peerMu sync.Mutex // serialises changes to peers
	peers  atomic.Pointer[map[[16]byte]identity.WGPublicKey]

	readyMu      sync.Mutex // guards ready and readyTransit
	ready        []readyPkt // released held packets and forwarded ones, sent before the next read
	readyTransit int        // forwarded packets in ready
	readyN       atomic.Int32

	localQ chan []byte // packets for the local stack (ICMPv6 errors), written by localLoop
	icmp   icmpLimiter

	captureMu sync.Mutex // serialises changes to captures
	captures  atomic.Pointer[[]*captureSink]

	inPackets, inBytes   atomic.Uint64
	outPackets, outBytes atomic.Uint64
	untracked            atomic.Uint64
	held                 atomic.Uint64
	forwarded            atomic.Uint64
	forwardedBytes       atomic.Uint64
	icmpSent             atomic.Uint64
	icmpSuppressed       atomic.Uint64 // not sent: rate limit, or the local queue full
	drops                [numDropReasons]atomic.Uint64
	lastLog              [numDropReasons]atomic.Int64 // unix nanos of the last drop log

	closeOnce sync.Once
	done      chan struct{}
	wg        sync.WaitGroup
}

var _ tun.Device = (*Filter)(nil)

const dropLogEvery = 10 * time.Second

// NewFilter wraps inner. It starts a sweeper goroutine, and one that
// writes the filter's own packets to the local stack, which Close stops.
func NewFilter(inner tun.Device, cfg FilterConfig) *Filter {
	if cfg.MaxFlows <= 0 {
		cfg.MaxFlows = 1 << 16
	}
	if cfg.FlowIdle <= 0 {
		cfg.FlowIdle = 2 * time.Minute
	}
	f := &Filter{
		inner:  inner,
		cfg:    cfg,
		log:    cfg.Logger,
		done:   make(chan struct{}),
		localQ: make(chan []byte, 64),
		mtu:    1420,
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	if mtu, err := inner.MTU(); err == nil && mtu >= minMTU {
		f.mtu = mtu
	}
	f.flows.init(cfg.MaxFlows)
	f.transitFlows.init(cfg.MaxFlows)
	f.SetLocal(cfg.Local)
	f.wg.Go(f.sweepLoop)
	f.wg.Go(f.localLoop)
	return f
}

// SetLocal replaces this node's address. Safe for concurrent use.
func (f *Filter) SetLocal(a netip.Addr) {
	f.localMu.Lock()
	defer f.localMu.Unlock()
	next := &localSet{primary: a.As16()}
	if old := f.local.Load(); old != nil {
		next = old.clone(time.Now())
		next.primary = a.As16()
	}
	f.local.Store(next)
}

// File implements tun.Device.
func (f *Filter) File() *os.File { return f.inner.File() }

// MTU implements tun.Device.
func (f *Filter) MTU() (int, error) { return f.inner.MTU() }

// Name implements tun.Device.
func (f *Filter) Name() (string, error) { return f.inner.Name() }

// Events implements tun.Device.
func (f *Filter) Events() <-chan tun.Event { return f.inner.Events() }

// BatchSize implements tun.Device.
func (f *Filter) BatchSize() int { return f.inner.BatchSize() }

// Read implements tun.Device: packets the local stack sends, and those
// this node forwards as a waypoint. A refused packet is reported with size
// 0, which wireguard-go skips.
func (f *Filter) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := f.read(bufs, sizes, offset)
	if n > 0 {
		if cs := f.captures.Load(); cs != nil {
			f.captureOut(*cs, bufs, sizes, n, offset)
		}
	}
	return n, err
}

func (f *Filter) read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if f.readyN.Load() > 0 {
		if n := f.takeReady(bufs, sizes, offset); n > 0 {
			return n, nil
		}
	}
	n, err := f.inner.Read(bufs, sizes, offset)
	if err != nil && f.woken(err) {
		return f.takeReady(bufs, sizes, offset), nil
	}
	if n > 0 {
		f.filterOut(bufs, sizes, n, offset)
	}
	return n, err
}

// filterOut checks and counts the first n packets that Read returned, and
// encapsulates those of flows that must cross waypoints.
func (f *Filter) filterOut(bufs [][]byte, sizes []int, n, offset int) {
	local := f.local.Load()
	now := f.flows.now()
	routed := f.cfg.Via != nil || f.overrides.Load() != nil
	gen := f.pathGen.Load()
	var info packetInfo
	var pkts, bytes uint64
	f.flows.mu.RLock()
	for i := range n {
		size := sizes[i]
		if size == 0 {
			continue
		}
		pkt := bufs[i][offset : offset+size]
		if !parseIPv6(pkt, &info) {
			f.drop(DropMalformed, &info, false)
			sizes[i] = 0
			continue
		}
		var task *taskAddr
		if info.src != local.primary {
			task = local.tasks[info.src]
			if task == nil {
				reason := DropSpoofedSource
				if _, ok := local.ended[info.src]; ok {
					reason = DropTaskEnded
				}
				if !overlayAddr(&info.src) || !overlayAddr(&info.dst) {
					reason = DropNotOverlay
				}
				f.drop(reason, &info, true)
				sizes[i] = 0
				continue
			}
			if !task.delivered(info.dst) && overlayAddr(&info.dst) {
				f.hold(task, info.dst, pkt)
				sizes[i] = 0
				continue
			}
		}
		if !overlayAddr(&info.dst) {
			f.drop(DropNotOverlay, &info, true)
			sizes[i] = 0
			continue
		}
		if isSRv6(pkt) {
			f.drop(DropBadSRH, &info, true) // the local stack may not choose waypoints
			sizes[i] = 0
			continue
		}
		if len(local.awaiting) > 0 {
			if w := local.awaiting[info.dst]; w != nil {
				f.holdAwaiting(w, pkt)
				sizes[i] = 0
				continue
			}
		}
		key := flowKey{local: info.src, remote: info.dst, lport: info.sport, rport: info.dport, proto: info.proto}
		fl := f.lookup(key, now)
		if routed {
			r := f.outPath(fl, &info, gen)
			if r.refuse {
				f.dropFlow(DropNoWaypoint, &info)
				f.Prohibit(pkt)
				sizes[i] = 0
				continue
			}
			if r.hdr != nil {
				if first := [16]byte(r.hdr[24:40]); task != nil && !task.delivered(first) {
					f.hold(task, first, pkt) // the first waypoint needs the task's delegation too
					sizes[i] = 0
					continue
				}
				if size > r.max || offset+size+len(r.hdr) > len(bufs[i]) {
					f.dropFlow(DropTooBig, &info)
					f.icmpError(ICMPv6PacketTooBig, 0, uint32(r.max), pkt)
					sizes[i] = 0
					continue
				}
				if info.proto == protoTCP {
					clampMSS(pkt, info.l4, r.mss)
				}
				sizes[i] = encapsulate(bufs[i], offset, size, r.hdr, r.seq.next())
			}
		}
		if fl != nil {
			fl.count(now, size, true)
		}
		pkts++
		bytes += uint64(size)
	}
	f.flows.mu.RUnlock()
	f.outPackets.Add(pkts)
	f.outBytes.Add(bytes)
}

// Write implements tun.Device: packets WireGuard received and decrypted.
// Refused packets are removed from bufs (which is reordered in place)
// before the rest are written to the inner device; an SRv6 packet for
// this node is replaced by the packet it carries, and one for which this
// node is a waypoint is forwarded.
func (f *Filter) Write(bufs [][]byte, offset int) (int, error) {
	if cs := f.captures.Load(); cs != nil {
		f.captureIn(*cs, bufs, offset)
	}
	local := f.local.Load()
	now := f.flows.now()
	via := f.cfg.Via
	gen := f.pathGen.Load()
	var info packetInfo
	var sr *srv6State
	var pkts, bytes uint64
	kept := bufs[:0]
	f.flows.mu.RLock()
	for _, buf := range bufs {
		pkt := buf[offset:]
		if !parseIPv6(pkt, &info) {
			f.drop(DropMalformed, &info, false)
			continue
		}
		if info.dst != local.primary && local.tasks[info.dst] == nil {
			reason := DropForeignDestination
			if _, ok := local.ended[info.dst]; ok {
				reason = DropTaskEnded
			}
			f.drop(reason, &info, true)
			continue
		}
		var v *srv6View
		if isSRv6(pkt) {
			if sr == nil {
				sr = srv6Pool.Get().(*srv6State)
			}
			v = &sr.v
			if err := parseSRv6(pkt, v); err != nil {
				f.drop(DropBadSRH, &info, true)
				continue
			}
			if v.sl > 0 {
				f.forward(local, sr, now)
				continue
			}
			// End.DT6: deliver the inner packet alone, once checked.
			buf = buf[v.inner : offset+len(v.pkt)]
			pkt = buf[offset:]
			info = v.info
		}
		key := flowKey{local: info.dst, remote: info.src, lport: info.dport, rport: info.sport, proto: info.proto}
		fl := f.lookup(key, now)
		if via != nil || v != nil {
			if r := f.arrival(fl, &info, v, sr, gen); r != dropNone {
				f.dropFlow(r, &info)
				continue
			}
		}
		if via != nil && info.proto == protoTCP && fl != nil {
			// A SYN-ACK (or SYN) of a flow this node sends through
			// waypoints: its MSS must leave room for the encapsulation.
			if r := fl.out.Load(); r != nil && r.hdr != nil {
				clampMSS(pkt, info.l4, r.mss)
			}
		}
		if fl != nil {
			fl.count(now, len(pkt), false)
		}
		pkts++
		bytes += uint64(len(pkt))
		kept = append(kept, buf)
	}
	f.flows.mu.RUnlock()
	if sr != nil {
		if len(sr.fwd) > 0 {
			f.sendTransit(sr.fwd)
			clear(sr.fwd)
			sr.fwd = sr.fwd[:0]
		}
		sr.v = srv6View{} // holds no packet while pooled
		srv6Pool.Put(sr)
	}
	f.inPackets.Add(pkts)
	f.inBytes.Add(bytes)
	if len(kept) == 0 {
		return len(bufs), nil
	}
	if _, err := f.inner.Write(kept, offset); err != nil {
		return 0, err
	}
	return len(bufs), nil
}

// lookup returns key's flow entry, adding it if new; nil (and the packet
// counted as untracked) when the table is full. The caller holds
// f.flows.mu.RLock; lookup may drop and retake it to insert a new flow.
func (f *Filter) lookup(key flowKey, now int64) *flow {
	fl := f.flows.m[key]
	if fl == nil {
		f.flows.mu.RUnlock()
		fl = f.flows.insert(key, now)
		f.flows.mu.RLock()
		if fl == nil {
			f.untracked.Add(1)
		}
	}
	return fl
}

func overlayAddr(a *[16]byte) bool {
	return a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x00 && a[3] == 0x20|identity.Suite
}

// countPeerSpoof counts a packet WireGuard refused because its source is
// not in the sending peer's AllowedIPs.
func (f *Filter) countPeerSpoof(peer string) {
	n := f.drops[DropPeerSpoofedSource].Add(1)
	if f.logDue(DropPeerSpoofedSource) {
		f.log.Warn("packet dropped", "reason", DropPeerSpoofedSource.String(), "peer", peer, "total", n)
	}
}

// logDue reports whether a drop of reason r should be logged now: at most
// once per reason every dropLogEvery.
func (f *Filter) logDue(r DropReason) bool {
	now := time.Now().UnixNano()
	last := f.lastLog[r].Load()
	return now-last >= int64(dropLogEvery) && f.lastLog[r].CompareAndSwap(last, now)
}

// drop counts a refused packet and logs it, at most once per reason every
// dropLogEvery.
func (f *Filter) drop(r DropReason, info *packetInfo, parsed bool) {
	n := f.drops[r].Add(1)
	if r == DropNotOverlay || r == DropTaskEnded {
		return
	}
	if !f.logDue(r) {
		return
	}
	if parsed {
		f.log.Warn("packet dropped", "reason", r.String(), "src", netip.AddrFrom16(info.src), "dst", netip.AddrFrom16(info.dst), "proto", info.proto, "total", n)
	} else {
		f.log.Warn("packet dropped", "reason", r.String(), "total", n)
	}
}

// Stats returns the filter's counters.
func (f *Filter) Stats() FilterStats {
	s := FilterStats{
		InPackets:  f.inPackets.Load(),
		InBytes:    f.inBytes.Load(),
		OutPackets: f.outPackets.Load(),
		OutBytes:   f.outBytes.Load(),
		Untracked:  f.untracked.Load(),
		Held:       f.held.Load(),
		Drops:      make(map[string]uint64, numDropReasons),

		Forwarded:      f.forwarded.Load(),
		ForwardedBytes: f.forwardedBytes.Load(),
		TransitFlows:   f.transitFlows.len(),
		ICMPErrors:     f.icmpSent.Load(),
		ICMPLimited:    f.icmpSuppressed.Load(),
	}
	for r := range numDropReasons {
		s.Drops[r.String()] = f.drops[r].Load()
	}
	s.ActiveFlows = f.flows.len()
	return s
}

// Drops returns how many packets were refused for reason r.
func (f *Filter) Drops(r DropReason) uint64 { return f.drops[r].Load() }

// Flows returns a snapshot of the active flows.
func (f *Filter) Flows() []Flow { return f.flows.snapshot() }

// Close stops the sweeper, ends every flow (reporting each to OnFlowEnd,
// and each transit flow's receipt to Transit.OnReceipt) and closes the
// inner device. It is idempotent.
func (f *Filter) Close() error {
	var err error
	f.closeOnce.Do(func() {
		close(f.done)
		f.wg.Wait()
		err = f.inner.Close()
		f.endFlows(f.flows.expire(0, true))
		f.endTransit(f.transitFlows.expire(0, true))
	})
	return err
}

func (f *Filter) sweepLoop() {
	interval := min(f.cfg.FlowIdle/4, 10*time.Second)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-f.done:
			return
		case <-t.C:
			cutoff := f.flows.now() - int64(f.cfg.FlowIdle)
			f.endFlows(f.flows.expire(cutoff, false))
			f.endTransit(f.transitFlows.expire(cutoff, false))
		}
	}
}

func (f *Filter) endFlows(ended []Flow) {
	if f.cfg.OnFlowEnd == nil {
		return
	}
	for _, fl := range ended {
		f.cfg.OnFlowEnd(fl)
	}
}
