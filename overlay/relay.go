package overlay

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/agent6/agent6/identity"
)

// Relay makes this node a member relay: it forwards datagrams between two
// nodes it has admitted that cannot reach each other directly (both
// behind endpoint-dependent NAT), on the node's own UDP socket. What it
// forwards is WireGuard ciphertext, or the peers' MACed path probes: it
// reads nothing but the frame header.
//
// A node binds by sending its key and a timestamp, MACed with a key from
// its static key and the relay's; the relay checks that the key is
// admitted (a map lookup, before any cryptography), then the source's
// rate, then the MAC, and from then on knows the node by its source
// address, as a TURN server knows an allocation by its 5-tuple. A send
// frame names its destination by tag (the first 8 bytes of its key); the
// relay forwards it as a recv frame naming the source, within the pair's
// token bucket. Sends from an address without a binding cost a map
// lookup, and the answer that tells a node whose NAT mapping changed to
// bind again is rate-limited, so a flood from a non-member takes nothing
// from members beyond the socket's own capacity. The format is in
// docs/nat.md.
//
// Safe for concurrent use. Close stops it.
type Relay struct {
	b    *Bind
	cfg  RelayConfig
	priv identity.WGPrivateKey
	log  *slog.Logger

	binds   *limiters[netip.Addr] // bind attempts per source address
	refuses *limiters[netip.Addr] // refused answers per source address

	mu     sync.RWMutex // guards the maps; each client guards its pairs
	byAddr map[netip.AddrPort]*relayed
	byTag  map[[tagSize]byte]*relayed
	byKey  map[identity.WGPublicKey]*relayed

	forwarded, forwardedBytes, throttled atomic.Uint64
	refused                              [numRefusals]atomic.Uint64

	stop   chan struct{}
	wg     sync.WaitGroup
	closed atomic.Bool
}

// RelayConfig configures a Relay. Zero values are the documented defaults.
type RelayConfig struct {
	// PrivateKey is the device's WireGuard key. Required.
	PrivateKey identity.WGPrivateKey
	// Admitted reports whether a key belongs to a node this relay serves
	// (membership's admission, in phase 2). Required. It is called on
	// the receive path for every binding request: it must not block.
	// Bindings are checked against it again every 5 s.
	Admitted func(identity.WGPublicKey) bool
	// PairRate caps what one node may send to another through the relay,
	// in bytes a second; 0 means DefaultPairRate. PairBurst is the
	// bucket's depth; 0 means a quarter of a second's worth (at least
	// 64 KiB).
	PairRate  int
	PairBurst int
	// MaxClients bounds the nodes bound at once; 0 means 4096.
	MaxClients int
	// Logger receives the log. Nil discards.
	Logger *slog.Logger
}

// DefaultPairRate is the default per-pair cap: 100 Mbit/s.
const DefaultPairRate = 100_000_000 / 8

// Relay limits.
const (
	relayBindRate    = 4 // bind attempts a second per source address
	relayBindGlobal  = 500
	relayRefuseRate  = 2 // refused answers a second per source address
	relayRefuseTotal = 200
	relaySources     = 4096
	relayPairsMax    = 1024 // destinations per client
	relayExpire      = 90 * time.Second
	relaySweep       = 5 * time.Second
	relayClockSkew   = 5 * time.Minute
)

// Reasons a relay refuses, for RelayStats.Refused.
const (
	refuseNotAdmitted = iota
	refuseRateLimited
	refuseBadMAC
	refuseReplayed
	refuseTagCollision
	refuseFull
	refuseUnbound
	refuseUnknownDestination
	refuseMalformed
	numRefusals
)

var refusalNames = [numRefusals]string{
	"not_admitted", "rate_limited", "bad_mac", "replayed", "tag_collision", "full",
	"unbound", "unknown_destination", "malformed",
}

// relayed is a node bound to this relay.
type relayed struct {
	key   identity.WGPublicKey
	tag   [tagSize]byte
	mac   [32]byte
	addr  netip.AddrPort
	ep    *conn.StdNetEndpoint
	stamp uint64
	seen  atomic.Int64 // unix ns of its last bind or send

	mu    sync.Mutex
	pairs map[[tagSize]byte]*relayPair // by destination
}

type relayPair struct {
	to                        *relayed
	lim                       *rate.Limiter
	packets, bytes, throttled uint64 // guarded by the source's mu
	last                      time.Time
}

// NewRelay makes the node behind b a member relay.
func NewRelay(b *Bind, cfg RelayConfig) (*Relay, error) {
	var zero identity.WGPrivateKey
	if cfg.PrivateKey.Equal(zero) {
		return nil, errors.New("overlay: RelayConfig.PrivateKey is required")
	}
	if cfg.Admitted == nil {
		return nil, errors.New("overlay: RelayConfig.Admitted is required")
	}
	if cfg.PairRate <= 0 {
		cfg.PairRate = DefaultPairRate
	}
	if cfg.PairBurst <= 0 {
		cfg.PairBurst = max(cfg.PairRate/4, 64<<10)
	}
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = 4096
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Relay{
		b: b, cfg: cfg, priv: cfg.PrivateKey, log: log,
		binds:   newLimiters[netip.Addr](relayBindRate, relayBindRate, relaySources, relayBindGlobal, relayBindGlobal),
		refuses: newLimiters[netip.Addr](relayRefuseRate, relayRefuseRate, relaySources, relayRefuseTotal, relayRefuseTotal),
		byAddr:  make(map[netip.AddrPort]*relayed),
		byTag:   make(map[[tagSize]byte]*relayed),
		byKey:   make(map[identity.WGPublicKey]*relayed),
		stop:    make(chan struct{}),
	}
	if !b.relay.CompareAndSwap(nil, r) {
		return nil, errors.New("overlay: the Bind already relays")
	}
	r.wg.Go(r.sweepLoop)
	return r, nil
}

// Close stops relaying. It is idempotent and returns an error wrapping
// net.ErrClosed after the first call.
func (r *Relay) Close() error {
	if r.closed.Swap(true) {
		return fmt.Errorf("overlay: relay: %w", net.ErrClosed)
	}
	r.b.relay.CompareAndSwap(r, nil)
	close(r.stop)
	r.wg.Wait()
	return nil
}

// handle handles a bind or send frame b from from, on the receive path;
// it may rewrite b.
func (r *Relay) handle(b []byte, from netip.AddrPort, now time.Time) {
	if b[2] == frameSend {
		r.forward(b, from, now)
		return
	}
	f, err := parsePathFrame(b)
	if err != nil {
		r.refused[refuseMalformed].Add(1)
		return
	}
	r.bindFrom(f, from, now)
}

// forward relays a send frame.
func (r *Relay) forward(b []byte, from netip.AddrPort, now time.Time) {
	if len(b) <= relayHeader || b[1] != pathVersion {
		r.refused[refuseMalformed].Add(1)
		return
	}
	tag := [tagSize]byte(b[pathHeader:relayHeader])
	r.mu.RLock()
	src, dst := r.byAddr[from], r.byTag[tag]
	r.mu.RUnlock()
	if src == nil {
		r.refuse(refuseUnbound, refusedUnbound, tag, from, now)
		return
	}
	if dst == nil {
		r.refuse(refuseUnknownDestination, refusedUnknown, tag, from, now)
		return
	}
	src.seen.Store(now.UnixNano())
	n := len(b) - relayHeader
	src.mu.Lock()
	pr := src.pairs[tag]
	if pr == nil || pr.to != dst {
		if len(src.pairs) >= relayPairsMax {
			src.mu.Unlock()
			r.refused[refuseFull].Add(1)
			return
		}
		pr = &relayPair{to: dst, lim: rate.NewLimiter(rate.Limit(r.cfg.PairRate), r.cfg.PairBurst)}
		src.pairs[tag] = pr
	}
	pr.last = now
	if !pr.lim.AllowN(now, n) {
		pr.throttled++
		src.mu.Unlock()
		r.throttled.Add(1)
		return
	}
	pr.packets++
	pr.bytes += uint64(n)
	src.mu.Unlock()
	b[2] = frameRecv
	copy(b[pathHeader:], src.tag[:])
	if err := r.b.Bind.Send([][]byte{b}, dst.ep); err == nil {
		r.forwarded.Add(1)
		r.forwardedBytes.Add(uint64(n))
	}
}

// refuse counts a refused send and, within the source's rate, tells it
// why: one small frame, no larger than the one refused.
func (r *Relay) refuse(reason int, code byte, tag [tagSize]byte, from netip.AddrPort, now time.Time) {
	r.refused[reason].Add(1)
	if r.refuses.allow(from.Addr(), 1, now) {
		_ = r.b.sendRaw(from, appendRefused(make([]byte, 0, refusedSize), code, tag))
	}
}

// bindFrom handles a binding request.
func (r *Relay) bindFrom(f pathFrame, from netip.AddrPort, now time.Time) {
	if f.typ != frameBind {
		r.refused[refuseMalformed].Add(1)
		return
	}
	if !r.cfg.Admitted(f.key) { // before any cryptography
		r.refused[refuseNotAdmitted].Add(1)
		return
	}
	if !r.binds.allow(from.Addr(), 1, now) {
		r.refused[refuseRateLimited].Add(1)
		return
	}
	r.mu.RLock()
	c := r.byKey[f.key]
	r.mu.RUnlock()
	var mac [32]byte
	if c != nil {
		mac = c.mac
	} else {
		var err error
		if mac, err = sharedKey(r.priv, f.key, labelRelay); err != nil {
			r.refused[refuseBadMAC].Add(1)
			return
		}
	}
	if !f.verify(&mac) {
		r.refused[refuseBadMAC].Add(1)
		return
	}
	if d := now.Sub(time.Unix(0, int64(f.stamp))); d > relayClockSkew || d < -relayClockSkew {
		r.refused[refuseReplayed].Add(1)
		return
	}
	r.mu.Lock()
	c = r.byKey[f.key]
	switch {
	case c != nil && f.stamp <= c.stamp:
		r.mu.Unlock()
		r.refused[refuseReplayed].Add(1)
		return
	case c == nil && r.byTag[tagOf(f.key)] != nil:
		r.mu.Unlock()
		r.refused[refuseTagCollision].Add(1)
		return
	case c == nil && len(r.byKey) >= r.cfg.MaxClients:
		r.mu.Unlock()
		r.refused[refuseFull].Add(1)
		return
	case c == nil:
		c = &relayed{key: f.key, tag: tagOf(f.key), mac: mac, pairs: make(map[[tagSize]byte]*relayPair)}
		r.byKey[f.key], r.byTag[c.tag] = c, c
		r.log.Debug("relay: bound", "peer", f.key.ShortString(), "endpoint", from)
	}
	if c.addr != from {
		if r.byAddr[c.addr] == c {
			delete(r.byAddr, c.addr)
		}
		if old := r.byAddr[from]; old != nil && old != c { // another node's old address, reused by a NAT
			r.drop(old)
		}
		c.addr, c.ep = from, &conn.StdNetEndpoint{AddrPort: from}
		r.byAddr[from] = c
	}
	c.stamp = f.stamp
	c.seen.Store(now.UnixNano())
	r.mu.Unlock()
	_ = r.b.sendRaw(from, appendBound(make([]byte, 0, boundSize), &mac, f.stamp, from))
}

// drop forgets c. Called with r.mu held.
func (r *Relay) drop(c *relayed) {
	delete(r.byKey, c.key)
	delete(r.byTag, c.tag)
	if r.byAddr[c.addr] == c {
		delete(r.byAddr, c.addr)
	}
}

func (r *Relay) sweepLoop() {
	t := time.NewTicker(relaySweep)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case now := <-t.C:
			r.sweep(now)
		}
	}
}

// sweep drops bindings not refreshed within relayExpire or no longer
// admitted, and idle pairs.
func (r *Relay) sweep(now time.Time) {
	r.mu.RLock()
	clients := make([]*relayed, 0, len(r.byKey))
	for _, c := range r.byKey {
		clients = append(clients, c)
	}
	r.mu.RUnlock()
	for _, c := range clients {
		if now.Sub(time.Unix(0, c.seen.Load())) > relayExpire || !r.cfg.Admitted(c.key) {
			r.mu.Lock()
			if r.byKey[c.key] == c {
				r.drop(c)
				r.log.Debug("relay: binding dropped", "peer", c.key.ShortString())
			}
			r.mu.Unlock()
			continue
		}
		c.mu.Lock()
		for tag, pr := range c.pairs {
			if now.Sub(pr.last) > relayExpire {
				delete(c.pairs, tag)
			}
		}
		c.mu.Unlock()
	}
}

// RelayStats counts what the relay did.
type RelayStats struct {
	Clients                   int // nodes bound
	Forwarded, ForwardedBytes uint64
	Throttled                 uint64 // datagrams over a pair's cap
	// Refused counts refusals by reason: not_admitted, rate_limited,
	// bad_mac, replayed, tag_collision, full, unbound,
	// unknown_destination, malformed.
	Refused map[string]uint64
}

// Stats reports the relay's counters.
func (r *Relay) Stats() RelayStats {
	r.mu.RLock()
	st := RelayStats{Clients: len(r.byKey)}
	r.mu.RUnlock()
	st.Forwarded, st.ForwardedBytes, st.Throttled = r.forwarded.Load(), r.forwardedBytes.Load(), r.throttled.Load()
	st.Refused = make(map[string]uint64, numRefusals)
	for i := range r.refused {
		if n := r.refused[i].Load(); n > 0 {
			st.Refused[refusalNames[i]] = n
		}
	}
	return st
}

// RelayPairStats is what the relay forwarded from one node to another.
type RelayPairStats struct {
	From, To                  identity.WGPublicKey
	Packets, Bytes, Throttled uint64
}

// Pairs reports the counters of every pair that sent within the last
// 90 s.
func (r *Relay) Pairs() []RelayPairStats {
	r.mu.RLock()
	clients := make([]*relayed, 0, len(r.byKey))
	for _, c := range r.byKey {
		clients = append(clients, c)
	}
	r.mu.RUnlock()
	var out []RelayPairStats
	for _, c := range clients {
		c.mu.Lock()
		for _, pr := range c.pairs {
			out = append(out, RelayPairStats{From: c.key, To: pr.to.key, Packets: pr.packets, Bytes: pr.bytes, Throttled: pr.throttled})
		}
		c.mu.Unlock()
	}
	return out
}
