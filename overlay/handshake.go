package overlay

import (
	"crypto/hmac"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.zx2c4.com/wireguard/conn"
)

// Two ways a first WireGuard handshake stalls for wireguard-go's 5 s retry
// (REKEY_TIMEOUT), and what the Bind, which sees every handshake message,
// does about them.
//
// Crossed initiations. When two peers initiate to each other at about the
// same time, each consumes the other's initiation, which discards its own,
// and then refuses the response to that discarded one: neither handshake
// completes, and at the retry they can cross again. An overlay makes this
// common: gossip runs both ways between every pair, and both sides of an
// admission release the packets they held for each other at once; in a
// 30-node join, 18 to 46 of the 435 pairs crossed. So while this node's
// initiation to an endpoint awaits its response, an initiation from that
// endpoint with a smaller sender index than ours is held back. The peer
// holds nothing, since it compares the same two indices, and answers ours;
// when that response arrives the held initiation is dropped, one handshake
// done. If none comes within crossHold of our initiation (it was lost, or
// reached the peer before the peer knew us), the held one is delivered, as
// it would have been at once. The Bind decides when a message comes off
// the socket, but wireguard-go consumes it later, from its handshake
// queue: a peer's initiation can arrive before this node initiates and be
// consumed after, which discards ours all the same. So an initiation of
// ours to an endpoint whose initiation wireguard-go has been handed and
// not yet answered is held too, and dropped when wireguard-go answers
// (superseded: the answer gives both sides the session). It is sent after
// crossHold if no answer goes out: wireguard-go also fails to answer when
// it creates our initiation between consuming the peer's and responding
// ("handshake initiation must be consumed first"), and then ours is what
// completes a handshake.
//
// Initiations before admission. Admission is a HELLO and its ACK: the
// side that gets the HELLO admits first and may initiate at once, and
// wireguard-go drops that initiation if it arrives before the ACK has made
// the sender a peer on the other side. So the Bind keeps the last
// initiation from each endpoint for a retry's time, and when the Device
// adds a peer at that endpoint it hands WireGuard the initiation again
// (Bind.redeliver), which now completes the handshake.

// WireGuard message layout (the whitepaper, §5.4): a little-endian type,
// then the sender's index; a response carries the receiver's index next.
const (
	wgInitiation     = 1
	wgResponse       = 2
	wgInitiationSize = 148
	wgResponseSize   = 92
)

// crossHold is how long after this node's initiation a crossing one is
// held for its answer, and how long ours is held for wireguard-go's answer
// to the peer's: above a handshake's round trip on loaded cores (in a
// 30-node test under -race one took 0.6 s from consuming an initiation to
// responding), well below the retry that a crossing costs otherwise.
const crossHold = 2 * time.Second

// rekeyTimeout is wireguard-go's retry interval: an initiation older than
// this has been superseded by its sender's next one.
const rekeyTimeout = 5 * time.Second

// maxTracked bounds each table of initiations, one entry per endpoint:
// beyond it the oldest entry is forgotten (the tables of our initiations,
// the peers' queued ones and the last from each endpoint), or the new one
// is left to wireguard-go's retry (those held).
const maxTracked = 4096

// HandshakeStats counts what the Bind did for first handshakes.
type HandshakeStats struct {
	CrossHeld       uint64 // a peer's initiation held while ours awaited its response
	CrossAnswered   uint64 // ours was answered first: the held one was dropped
	CrossReleased   uint64 // ours went unanswered: the held one was delivered
	CrossSuperseded uint64 // ours held, then dropped: WireGuard answered the peer's
	CrossSentLate   uint64 // ours held, then sent: WireGuard did not answer the peer's
	Redelivered     uint64 // an initiation that came before its peer was added, handed to WireGuard again
}

// handshakeType returns the WireGuard handshake message type of b (an
// initiation or a response of the right size), or 0.
func handshakeType(b []byte) byte {
	switch {
	case len(b) == wgInitiationSize && binary.LittleEndian.Uint32(b) == wgInitiation:
		return wgInitiation
	case len(b) == wgResponseSize && binary.LittleEndian.Uint32(b) == wgResponse:
		return wgResponse
	}
	return 0
}

// endpointAddr is ep's address, IPv4-mapped IPv6 unmapped, so that the
// endpoint WireGuard sends to and the source it hears from compare equal.
// A peer whose paths the Bind manages is keyed by its overlay address,
// whatever path its messages take.
func endpointAddr(ep conn.Endpoint) (netip.AddrPort, bool) {
	var ap netip.AddrPort
	if e, ok := ep.(*conn.StdNetEndpoint); ok {
		ap = e.AddrPort
	} else if e, ok := ep.(*peerEndpoint); ok {
		return e.hsKey, true
	} else {
		var err error
		if ap, err = netip.ParseAddrPort(ep.DstToString()); err != nil {
			return ap, false
		}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

type sentInit struct {
	index uint32
	at    time.Time
}

type initiation struct {
	pkt []byte
	ep  conn.Endpoint
	at  time.Time // when it arrived (ours: when it was made)
	// why is released or redelivered for one queued for the receive
	// function, which counts it when it hands it over.
	why int
}

const (
	released = iota + 1
	redelivered
)

// handshakes is the Bind's record of handshakes in flight. Safe for
// concurrent use.
type handshakes struct {
	// mac1Key is HASH("mac1----" || this node's public key): only an
	// initiation whose mac1 verifies under it (one made for this node) is
	// tracked, so a datagram from anyone who does not know this node's key
	// changes nothing here. Zero until the device sets it (setLocalKey).
	mac1Key atomic.Pointer[[blake2s.Size]byte]

	mu     sync.Mutex
	sent   *table[netip.AddrPort, sentInit]   // our initiation awaiting its response
	held   map[netip.AddrPort]*initiation     // the peer's crossing one, held meanwhile
	queued *table[netip.AddrPort, sentInit]   // the peer's, handed to WireGuard, not yet answered
	own    map[netip.AddrPort]*initiation     // ours, held meanwhile
	last   *table[netip.AddrPort, initiation] // the last one delivered, for redeliver
	ready  chan initiation                    // for the receive function
	send   func(pkt []byte, ep conn.Endpoint) error

	crossHeld, crossAnswered, crossReleased, crossSuperseded, crossSentLate, redelivered atomic.Uint64
}

// newHandshakes returns empty tables; send sends an initiation of ours
// that was held.
func newHandshakes(send func(pkt []byte, ep conn.Endpoint) error) *handshakes {
	return &handshakes{
		send:   send,
		sent:   newTable[netip.AddrPort, sentInit](maxTracked),
		held:   make(map[netip.AddrPort]*initiation),
		queued: newTable[netip.AddrPort, sentInit](maxTracked),
		own:    make(map[netip.AddrPort]*initiation),
		last:   newTable[netip.AddrPort, initiation](maxTracked),
		ready:  make(chan initiation, 2*maxTracked),
	}
}

// setLocalKey sets this node's WireGuard public key, for the mac1 check.
func (h *handshakes) setLocalKey(pub [32]byte) {
	k := blake2s.Sum256(append([]byte("mac1----"), pub[:]...))
	h.mac1Key.Store(&k)
}

// wgMAC1Offset is where an initiation's mac1 begins: it covers the bytes
// before it.
const wgMAC1Offset = wgInitiationSize - 32

// validMAC1 reports whether initiation b carries a mac1 made for this
// node's key (true while the key is unset): the check wireguard-go makes
// first, as cheap (one BLAKE2s), and the bar for being tracked here.
func (h *handshakes) validMAC1(b []byte) bool {
	k := h.mac1Key.Load()
	if k == nil {
		return true
	}
	mac, _ := blake2s.New128(k[:])
	mac.Write(b[:wgMAC1Offset])
	var sum [blake2s.Size128]byte
	return hmac.Equal(mac.Sum(sum[:0]), b[wgMAC1Offset:wgMAC1Offset+blake2s.Size128])
}

// invalid records that wireguard-go refused the initiation from ap as
// invalid (a forgery that knew this node's key, or a stale one): it will
// not answer it, so our own initiation held behind it goes out now
// instead of after crossHold.
func (h *handshakes) invalid(ap netip.AddrPort) {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	h.mu.Lock()
	h.queued.delete(ap)
	own := h.own[ap]
	h.mu.Unlock()
	if own != nil {
		h.sendOwn(ap, own)
	}
}

func (h *handshakes) stats() HandshakeStats {
	return HandshakeStats{
		CrossHeld:       h.crossHeld.Load(),
		CrossAnswered:   h.crossAnswered.Load(),
		CrossReleased:   h.crossReleased.Load(),
		CrossSuperseded: h.crossSuperseded.Load(),
		CrossSentLate:   h.crossSentLate.Load(),
		Redelivered:     h.redelivered.Load(),
	}
}

// initiated records this node's initiation b to ep, and reports whether
// to send it now: not while wireguard-go holds the peer's initiation from
// ep unanswered, which it would consume after ours, discarding it.
func (h *handshakes) initiated(b []byte, ep conn.Endpoint, now time.Time) (send bool) {
	ap, ok := endpointAddr(ep)
	if !ok {
		return true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if q, ok := h.queued.get(ap); ok && now.Sub(q.at) < crossHold {
		if parked, _ := park(h.own, ap, b, ep, now, now.Add(crossHold), h.sendOwn); parked {
			return false
		}
	}
	h.record(ap, b, now)
	return true
}

// park keeps a copy of b from ep in m at ap until deadline, when fire is
// called with it unless take took it out before; a newer one replaces the
// one parked there, and keeps its deadline. It reports false when m is
// full, and whether the entry is new. Called with h.mu held.
func park(m map[netip.AddrPort]*initiation, ap netip.AddrPort, b []byte, ep conn.Endpoint, now, deadline time.Time,
	fire func(netip.AddrPort, *initiation)) (parked, isNew bool) {
	if i := m[ap]; i != nil {
		i.pkt = append(i.pkt[:0], b...)
		i.ep, i.at = ep, now
		return true, false
	}
	if len(m) >= maxTracked {
		return false, false
	}
	i := &initiation{pkt: append([]byte(nil), b...), ep: ep, at: now}
	m[ap] = i
	time.AfterFunc(max(time.Until(deadline), 0), func() { fire(ap, i) })
	return true, true
}

// take removes i from m at ap, and reports whether it was still there.
// Called with h.mu held.
func take(m map[netip.AddrPort]*initiation, ap netip.AddrPort, i *initiation) bool {
	if m[ap] != i {
		return false
	}
	delete(m, ap)
	return true
}

// record notes our initiation b to ap as awaiting its response. Called
// with h.mu held.
func (h *handshakes) record(ap netip.AddrPort, b []byte, now time.Time) {
	h.sent.put(ap, sentInit{index: binary.LittleEndian.Uint32(b[4:]), at: now})
}

// sendOwn sends our held initiation unless wireguard-go answered the
// peer's first.
func (h *handshakes) sendOwn(ap netip.AddrPort, own *initiation) {
	h.mu.Lock()
	if !take(h.own, ap, own) {
		h.mu.Unlock()
		return
	}
	h.record(ap, own.pkt, time.Now())
	h.mu.Unlock()
	h.crossSentLate.Add(1)
	if h.send != nil {
		_ = h.send(own.pkt, own.ep) // an error: the bind is closed
	}
}

// responded records this node's response b to ep: wireguard-go has
// consumed the initiation it answers.
func (h *handshakes) responded(b []byte, ep conn.Endpoint) {
	ap, ok := endpointAddr(ep)
	if !ok {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if q, ok := h.queued.get(ap); ok && q.index == binary.LittleEndian.Uint32(b[8:]) {
		h.queued.delete(ap)
		if h.own[ap] != nil {
			delete(h.own, ap)
			h.crossSuperseded.Add(1)
		}
	}
}

// handed records that wireguard-go was handed the peer's initiation b from
// ap: consuming it discards ours, whose response it will refuse, and
// until it answers, an initiation of ours would be discarded too. Called
// with h.mu held.
func (h *handshakes) handed(ap netip.AddrPort, b []byte, now time.Time) {
	h.sent.delete(ap)
	h.queued.put(ap, sentInit{index: binary.LittleEndian.Uint32(b[4:]), at: now})
}

// received looks at a handshake message b from ep before WireGuard does,
// and reports whether to hold it back.
func (h *handshakes) received(b []byte, ep conn.Endpoint, now time.Time) (hold bool) {
	typ := handshakeType(b)
	if typ == 0 {
		return false
	}
	ap, ok := endpointAddr(ep)
	if !ok {
		return false
	}
	if typ == wgInitiation && !h.validMAC1(b) {
		return false // not for this node: wireguard-go drops it, nothing to track
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if typ == wgResponse {
		if s, ok := h.sent.get(ap); ok && binary.LittleEndian.Uint32(b[8:]) == s.index {
			h.sent.delete(ap)
			if h.held[ap] != nil {
				delete(h.held, ap)
				h.crossAnswered.Add(1)
			}
		}
		return false
	}
	if h.hold(ap, b, ep, now) {
		return true
	}
	h.handed(ap, b, now)
	h.keep(ap, b, ep, now)
	return false
}

// hold holds the peer's initiation b from ap if it crosses ours: ours
// awaits its response, for less than crossHold, and has the larger sender
// index. Called with h.mu held.
func (h *handshakes) hold(ap netip.AddrPort, b []byte, ep conn.Endpoint, now time.Time) bool {
	s, outstanding := h.sent.get(ap)
	if !outstanding || !now.Before(s.at.Add(crossHold)) || binary.LittleEndian.Uint32(b[4:]) >= s.index {
		return false
	}
	parked, isNew := park(h.held, ap, b, ep, now, s.at.Add(crossHold), h.release)
	if isNew {
		h.crossHeld.Add(1)
	}
	return parked
}

// keep remembers b as the last initiation delivered from ap. Called with
// h.mu held.
func (h *handshakes) keep(ap netip.AddrPort, b []byte, ep conn.Endpoint, now time.Time) {
	l, _ := h.last.get(ap)
	h.last.put(ap, initiation{pkt: append(l.pkt[:0], b...), ep: ep, at: now})
}

// release delivers held unless the response to ours came first.
func (h *handshakes) release(ap netip.AddrPort, held *initiation) {
	h.mu.Lock()
	if !take(h.held, ap, held) {
		h.mu.Unlock()
		return
	}
	out := initiation{pkt: held.pkt, ep: held.ep, at: held.at, why: released}
	h.keep(ap, out.pkt, out.ep, time.Now())
	h.mu.Unlock()
	h.deliver(out)
}

// redeliver hands WireGuard again the last initiation from ap, if it came
// less than rekeyTimeout ago: one that arrived before its peer was added
// was dropped, and its sender would wait for the retry.
func (h *handshakes) redeliver(ap netip.AddrPort, now time.Time) {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	h.mu.Lock()
	l, ok := h.last.get(ap)
	h.last.delete(ap)
	h.mu.Unlock()
	l.why = redelivered
	if ok && now.Sub(l.at) < rekeyTimeout {
		h.deliver(l)
	}
}

// deliver queues i for the receive function.
func (h *handshakes) deliver(i initiation) {
	select {
	case h.ready <- i:
	default: // full: the bind is closed and nobody reads
	}
}

// receiveFunc is an extra conn.ReceiveFunc that hands WireGuard the
// initiations released or redelivered, until done is closed. A
// redelivered one meets the crossing check when it is handed over, not
// when it was queued: the peer being added, this node may have initiated
// to it in between, with the packets it held for it.
func (h *handshakes) receiveFunc(done <-chan struct{}) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		for {
			var i initiation
			select {
			case i = <-h.ready:
			case <-done:
				return 0, net.ErrClosed
			}
			if ap, ok := endpointAddr(i.ep); ok {
				now := time.Now()
				h.mu.Lock()
				// A redelivered one meets the crossing check now.
				held := i.why == redelivered && h.hold(ap, i.pkt, i.ep, now)
				if !held {
					h.handed(ap, i.pkt, now)
				}
				h.mu.Unlock()
				if held {
					continue
				}
			}
			switch i.why {
			case released:
				h.crossReleased.Add(1)
			case redelivered:
				h.redelivered.Add(1)
			}
			sizes[0] = copy(bufs[0], i.pkt)
			eps[0] = i.ep
			return 1, nil
		}
	}
}
