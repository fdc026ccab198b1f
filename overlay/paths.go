package overlay

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/agent6/agent6/identity"
)

// Paths chooses, for each peer it manages, the path WireGuard's datagrams
// take: a direct candidate address, a member relay, or TURN. The peer's
// WireGuard endpoint is the peer itself (Device.SetPeer with Managed), as
// in Tailscale's magicsock, so a path can change under a running
// WireGuard session, and with it a TCP connection, without WireGuard
// noticing: its sessions do not depend on the endpoint.
//
// A path is confirmed by a ping answered with a pong, both MACed with a
// key only the two peers can derive from their static X25519 keys, so
// nobody else can make a path look alive. The best confirmed path wins:
// direct before a member relay before TURN, and the lowest round trip
// among equals. Pings go to every candidate with backoff until a direct
// path is confirmed, to the path in use every 3 s while the peer is
// active and every 25 s while idle (which holds NAT mappings open). A
// direct path unanswered for 6.5 s is left for a relay while it is
// probed again; a relayed pair keeps probing and moves to direct once a
// pong confirms it. Punch sends pings to a peer's candidates at once, for
// when both sides are told to punch at the same moment.
//
// Safe for concurrent use. Close stops it.
type Paths struct {
	b    *Bind
	priv identity.WGPrivateKey
	pub  identity.WGPublicKey
	log  *slog.Logger
	turn *turnClient // nil without TURN

	tables atomic.Pointer[pathTables] // read on every datagram; rebuilt under mu

	mu     sync.Mutex // guards the fields below and every peer's manager state
	peers  map[identity.WGPublicKey]*peerEndpoint
	relays []*relayClient
	waits  map[[txidSize]byte]chan PingResult // Ping calls awaiting a pong

	wake     chan struct{}
	stop     context.CancelFunc
	ctx      context.Context
	wg       sync.WaitGroup
	closed   atomic.Bool
	counters pathCounters
}

// PathKind names the kind of a path.
type PathKind string

// Path kinds.
const (
	PathNone   PathKind = "none"   // no path confirmed or usable yet
	PathDirect PathKind = "direct" // straight to a candidate address
	PathRelay  PathKind = "relay"  // through a member relay
	PathTURN   PathKind = "turn"   // through a TURN server's allocations
)

// RelayServer is a member relay this node binds to.
type RelayServer struct {
	Addr      netip.AddrPort
	PublicKey identity.WGPublicKey
}

// PathsConfig configures Paths. Zero values are the documented defaults.
type PathsConfig struct {
	// PrivateKey is the device's WireGuard key. Required.
	PrivateKey identity.WGPrivateKey
	// Relays are the member relays to bind to, and reach peers through.
	Relays []RelayServer
	// TURN, if set, allocates a relayed address on a TURN server.
	TURN *TURNConfig
	// Logger receives the log. Nil discards.
	Logger *slog.Logger
}

// PeerPaths is what Paths knows of how to reach one peer.
type PeerPaths struct {
	PublicKey identity.WGPublicKey
	// Candidates are addresses the peer may be reached at directly: its
	// interface addresses and reflexive addresses.
	Candidates []netip.AddrPort
	// Relays are the member relays (keys of PathsConfig.Relays) the peer
	// is bound to. Nil means all of them.
	Relays []identity.WGPublicKey
	// TURN is the peer's relayed address on the TURN server, if it has one.
	TURN netip.AddrPort
}

// Timing. The heartbeat and trust figures follow magicsock's (3 s and
// 6.5 s): a path survives one lost pong, not two.
const (
	pathTick        = 100 * time.Millisecond
	heartbeat       = 3 * time.Second  // ping the path in use while the peer is active
	keepalive       = 25 * time.Second // ping it while idle: NAT mappings last 30 s or more
	trustFor        = 6500 * time.Millisecond
	staleFor        = keepalive + trustFor // after trustFor, still tried beside a relay
	activeFor       = 45 * time.Second     // a peer sent to within this is active
	pingTimeout     = 5 * time.Second
	probeFirst      = time.Second
	probeMax        = 8 * time.Second // backoff cap of probes to unconfirmed candidates
	punchFor        = 2 * time.Second
	punchEvery      = 200 * time.Millisecond
	bindEvery       = 25 * time.Second // refresh a relay binding, and its NAT mapping
	bindRetry       = time.Second
	bindLost        = 60 * time.Second
	unknownFor      = 5 * time.Second // a relay said the peer is not bound there
	maxCandidates   = 16
	maxSprayed      = 8
	maxOutstanding  = 64
	pongRate        = 20 // pongs a second, per peer
	maxLearned      = 8  // addresses learned from pings, per peer
	maxPathsWaiting = 256
)

var (
	// ErrNoPath is returned when a managed peer has no path at all: no
	// candidate, relay or TURN address.
	ErrNoPath = errors.New("overlay: no path to peer")
	// ErrUnknownPeer is returned for a peer Paths does not manage.
	ErrUnknownPeer = errors.New("overlay: peer not managed by paths")
)

// managedPrefix starts the UAPI endpoint of a managed peer: its key in hex.
const managedPrefix = "agent6-peer:"

// ManagedEndpoint is the endpoint string that makes WireGuard's endpoint
// for pub the peer itself, to be sent along the paths Paths chooses.
func ManagedEndpoint(pub identity.WGPublicKey) string {
	raw := pub.Raw()
	return managedPrefix + hex.EncodeToString(raw[:])
}

// pathTables are the lookups on the datagram path, replaced whole.
type pathTables struct {
	byKey  map[identity.WGPublicKey]*peerEndpoint
	byTag  map[[tagSize]byte]*peerEndpoint
	byAddr map[netip.AddrPort]*peerEndpoint // candidates and learned addresses
	byTURN map[netip.AddrPort]*peerEndpoint // peers' TURN relayed addresses
	relays map[netip.AddrPort]*relayClient
}

// NewPaths starts managing paths on b's socket. The device must be up
// (its socket open). A TURN client's socket is opened here, in the
// caller's network namespace.
func NewPaths(b *Bind, cfg PathsConfig) (*Paths, error) {
	var zero identity.WGPrivateKey
	if cfg.PrivateKey.Equal(zero) {
		return nil, errors.New("overlay: PathsConfig.PrivateKey is required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Paths{
		b: b, priv: cfg.PrivateKey, pub: cfg.PrivateKey.Public(), log: log,
		peers: make(map[identity.WGPublicKey]*peerEndpoint),
		waits: make(map[[txidSize]byte]chan PingResult),
		wake:  make(chan struct{}, 1),
	}
	for _, r := range cfg.Relays {
		k, err := sharedKey(cfg.PrivateKey, r.PublicKey, labelRelay)
		if err != nil {
			return nil, fmt.Errorf("overlay: relay %s: %w", r.Addr, err)
		}
		r.Addr = unmap(r.Addr)
		p.relays = append(p.relays, &relayClient{srv: r, ep: &conn.StdNetEndpoint{AddrPort: r.Addr}, mac: k})
	}
	p.ctx, p.stop = context.WithCancel(context.Background())
	if cfg.TURN != nil {
		t, err := newTURNClient(p, *cfg.TURN)
		if err != nil {
			return nil, err
		}
		p.turn = t
	}
	p.rebuild()
	if !b.paths.CompareAndSwap(nil, p) {
		p.stop()
		if p.turn != nil {
			p.turn.close()
		}
		return nil, errors.New("overlay: the Bind already has Paths")
	}
	p.wg.Go(p.loop)
	if p.turn != nil {
		p.wg.Go(p.turn.run)
	}
	return p, nil
}

// Close stops managing paths: managed peers have no path from then on.
// It is idempotent and returns an error wrapping net.ErrClosed after the
// first call.
func (p *Paths) Close() error {
	if p.closed.Swap(true) {
		return fmt.Errorf("overlay: paths: %w", net.ErrClosed)
	}
	p.stop()
	if p.turn != nil {
		p.turn.close()
	}
	p.wg.Wait()
	p.b.paths.CompareAndSwap(p, nil)
	p.mu.Lock()
	for _, e := range p.peers {
		e.cur.Store(nil) // WireGuard may hold e still: it has no path now
	}
	p.mu.Unlock()
	return nil
}

// peerEndpoint is a managed peer, and WireGuard's endpoint for it.
type peerEndpoint struct {
	p     *Paths
	key   identity.WGPublicKey
	tag   [tagSize]byte
	hsKey netip.AddrPort // the handshake tables' key: the overlay address
	mac   [32]byte       // the pair's path-probe key

	cur    atomic.Pointer[route]
	lastTx atomic.Int64 // unix ns
	lastRx atomic.Int64

	initMu   sync.Mutex
	lastInit []byte    // WireGuard's last handshake initiation to the peer
	initAt   time.Time // when it was sent

	// Manager state, guarded by Paths.mu.
	known      bool // SetPeer has been called
	direct     []*pathState
	relays     []*pathState
	turn       *pathState
	pings      map[[txidSize]byte]sentPing
	probeEvery time.Duration
	nextProbe  time.Time
	punchUntil time.Time
	nextPunch  time.Time
	pongs      *rate.Limiter
	wasActive  bool
	upgrades   uint64 // moves to a direct path
	fallbacks  uint64 // moves off a direct path
}

var _ conn.Endpoint = (*peerEndpoint)(nil)

// ClearSrc implements conn.Endpoint; each path keeps its own source.
func (e *peerEndpoint) ClearSrc() {}

// SrcToString implements conn.Endpoint.
func (e *peerEndpoint) SrcToString() string { return "" }

// DstToString implements conn.Endpoint: the address datagrams go to now.
func (e *peerEndpoint) DstToString() string {
	if r := e.cur.Load(); r != nil && r.to.IsValid() {
		return r.to.String()
	}
	return ""
}

// DstToBytes implements conn.Endpoint, for WireGuard's cookie MACs: the
// peer's key, the same whatever the path.
func (e *peerEndpoint) DstToBytes() []byte { raw := e.key.Raw(); return raw[:] }

// DstIP implements conn.Endpoint.
func (e *peerEndpoint) DstIP() netip.Addr {
	if r := e.cur.Load(); r != nil {
		return r.to.Addr()
	}
	return netip.Addr{}
}

// SrcIP implements conn.Endpoint.
func (e *peerEndpoint) SrcIP() netip.Addr { return netip.Addr{} }

// pathState is one path to a peer.
type pathState struct {
	kind     PathKind
	addr     netip.AddrPort // direct: the peer's; TURN: the peer's relayed address
	ep       *conn.StdNetEndpoint
	relay    *relayClient // PathRelay
	learned  bool         // from a ping, not from SetPeer
	lastPing time.Time
	lastPong time.Time
	rtt      time.Duration
	missed   int
	unknown  time.Time // PathRelay: the relay said the peer is not bound there, at
}

func (s *pathState) alive(now time.Time) bool {
	return !s.lastPong.IsZero() && now.Sub(s.lastPong) < trustFor && s.missed < 2
}

func (s *pathState) stale(now time.Time) bool {
	return !s.lastPong.IsZero() && now.Sub(s.lastPong) < staleFor
}

type sentPing struct {
	path *pathState
	at   time.Time
}

// route is where a peer's datagrams go now.
type route struct {
	kind  PathKind
	path  *pathState
	to    netip.AddrPort       // for status and DstToString
	ep    *conn.StdNetEndpoint // direct: the peer's address; relay: the relay's
	relay *relayClient
	also  *pathState             // a stale direct path, tried beside a relay
	spray []*conn.StdNetEndpoint // no path confirmed: every candidate
}

// endpoint returns the managed peer pub, created if new.
func (p *Paths) endpoint(pub identity.WGPublicKey) *peerEndpoint {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.peers[pub]; e != nil {
		return e
	}
	e := p.newPeer(pub)
	p.rebuild()
	return e
}

// newPeer adds pub. Called with p.mu held.
func (p *Paths) newPeer(pub identity.WGPublicKey) *peerEndpoint {
	e := &peerEndpoint{
		p: p, key: pub, tag: tagOf(pub), hsKey: netip.AddrPortFrom(pub.Addr(), 0),
		pings: make(map[[txidSize]byte]sentPing), probeEvery: probeFirst,
		pongs: rate.NewLimiter(pongRate, 2*pongRate),
	}
	// A low-order key gives no MAC key: its pings never verify.
	e.mac, _ = sharedKey(p.priv, pub, labelPath)
	p.peers[pub] = e
	return e
}

// SetPeer sets how to reach a peer, and starts probing its candidates.
// The WireGuard peer itself is set with Device.SetPeer (Managed).
func (p *Paths) SetPeer(pp PeerPaths) error {
	if pp.PublicKey.IsZero() {
		return errors.New("overlay: paths: peer public key is required")
	}
	if p.closed.Load() {
		return fmt.Errorf("overlay: paths: %w", net.ErrClosed)
	}
	p.mu.Lock()
	e := p.peers[pp.PublicKey]
	if e == nil {
		e = p.newPeer(pp.PublicKey)
	}
	e.known = true
	var direct []*pathState
	for _, s := range e.direct { // keep what was learned
		if s.learned {
			direct = append(direct, s)
		}
	}
	for _, c := range pp.Candidates {
		c = unmap(c)
		if !c.IsValid() || c.Port() == 0 || c.Addr().IsUnspecified() {
			continue
		}
		if i := slices.IndexFunc(direct, func(s *pathState) bool { return s.addr == c }); i >= 0 {
			direct[i].learned = false
			continue
		}
		if old := find(e.direct, c); old != nil {
			old.learned = false
			direct = append(direct, old)
			continue
		}
		direct = append(direct, &pathState{kind: PathDirect, addr: c, ep: &conn.StdNetEndpoint{AddrPort: c}})
	}
	if len(direct) > maxCandidates {
		direct = direct[:maxCandidates]
	}
	e.direct = direct
	e.relays = nil
	for _, rc := range p.relays {
		if pp.Relays == nil || slices.ContainsFunc(pp.Relays, rc.srv.PublicKey.Equal) {
			old := findRelay(e.relays, rc)
			if old == nil {
				old = &pathState{kind: PathRelay, addr: rc.srv.Addr, relay: rc}
			}
			e.relays = append(e.relays, old)
		}
	}
	e.turn = nil
	if pp.TURN.IsValid() && p.turn != nil {
		e.turn = &pathState{kind: PathTURN, addr: unmap(pp.TURN)}
	}
	e.probeEvery, e.nextProbe = probeFirst, time.Time{}
	p.rebuild()
	p.choose(e, time.Now())
	p.mu.Unlock()
	p.poke()
	return nil
}

func find(paths []*pathState, addr netip.AddrPort) *pathState {
	for _, s := range paths {
		if s.addr == addr {
			return s
		}
	}
	return nil
}

func findRelay(paths []*pathState, rc *relayClient) *pathState {
	for _, s := range paths {
		if s.relay == rc {
			return s
		}
	}
	return nil
}

// RemovePeer stops managing pub.
func (p *Paths) RemovePeer(pub identity.WGPublicKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.peers[pub]; e != nil {
		delete(p.peers, pub)
		e.cur.Store(nil)
		p.rebuild()
	}
}

// Punch starts hole punching towards pub now: candidates are added to
// the peer's, and every candidate gets a ping at once and every 200 ms
// for 2 s. Both sides calling it at about the same time (told by a
// coordination message) open their NATs to each other. It does not block.
func (p *Paths) Punch(pub identity.WGPublicKey, candidates []netip.AddrPort) error {
	p.mu.Lock()
	e := p.peers[pub]
	if e == nil || !e.known {
		p.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrUnknownPeer, pub.ShortString())
	}
	for _, c := range candidates {
		c = unmap(c)
		if c.IsValid() && c.Port() != 0 && find(e.direct, c) == nil && len(e.direct) < maxCandidates {
			e.direct = append(e.direct, &pathState{kind: PathDirect, addr: c, ep: &conn.StdNetEndpoint{AddrPort: c}})
		}
	}
	now := time.Now()
	e.punchUntil, e.nextPunch = now.Add(punchFor), now
	e.probeEvery = probeFirst
	p.counters.punches.Add(1)
	p.rebuild()
	p.mu.Unlock()
	p.poke()
	return nil
}

// poke wakes the manager.
func (p *Paths) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// rebuild replaces the lookup tables. Called with p.mu held.
func (p *Paths) rebuild() {
	t := &pathTables{
		byKey:  make(map[identity.WGPublicKey]*peerEndpoint, len(p.peers)),
		byTag:  make(map[[tagSize]byte]*peerEndpoint, len(p.peers)),
		byAddr: make(map[netip.AddrPort]*peerEndpoint),
		byTURN: make(map[netip.AddrPort]*peerEndpoint),
		relays: make(map[netip.AddrPort]*relayClient, len(p.relays)),
	}
	for k, e := range p.peers {
		t.byKey[k] = e
		if o := t.byTag[e.tag]; o == nil {
			t.byTag[e.tag] = e
		}
		for _, s := range e.direct {
			t.byAddr[s.addr] = e
		}
		if e.turn != nil {
			t.byTURN[e.turn.addr] = e
		}
	}
	for _, rc := range p.relays {
		t.relays[rc.srv.Addr] = rc
	}
	p.tables.Store(t)
}

// byAddr returns the managed peer whose address ep is, or nil.
func (p *Paths) byAddr(ep conn.Endpoint) *peerEndpoint {
	t := p.tables.Load()
	if len(t.byAddr) == 0 {
		return nil
	}
	ap, ok := endpointAddr(ep)
	if !ok {
		return nil
	}
	return t.byAddr[ap]
}

// send sends WireGuard's datagrams to a managed peer along its route.
func (p *Paths) send(e *peerEndpoint, bufs [][]byte) error {
	now := time.Now()
	if last := e.lastTx.Swap(now.UnixNano()); now.Sub(time.Unix(0, last)) > activeFor {
		p.poke() // idle until now: heartbeat the path at once
	}
	r := e.cur.Load()
	if r == nil {
		p.counters.noPath.Add(uint64(len(bufs)))
		return fmt.Errorf("%w %s", ErrNoPath, e.key.ShortString())
	}
	var err error
	switch r.kind {
	case PathDirect:
		err = p.b.Bind.Send(bufs, r.ep)
	case PathRelay:
		err = p.sendRelay(r.relay, e.tag, bufs)
	case PathTURN:
		err = p.turn.send(bufs, r.to)
	default:
		for _, ep := range r.spray {
			if serr := p.b.Bind.Send(bufs, ep); serr != nil {
				err = serr
			}
		}
	}
	if r.also != nil {
		_ = p.b.Bind.Send(bufs, r.also.ep)
	}
	return err
}

var relayBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// sendRelay sends bufs to the peer with tag through relay rc.
func (p *Paths) sendRelay(rc *relayClient, tag [tagSize]byte, bufs [][]byte) error {
	out := make([][]byte, len(bufs))
	held := make([]*[]byte, len(bufs))
	for i, b := range bufs {
		bp := relayBufs.Get().(*[]byte)
		held[i] = bp
		out[i] = append(appendRelayHeader((*bp)[:0], frameSend, tag), b...)
	}
	err := p.b.Bind.Send(out, rc.ep)
	for i, bp := range held {
		*bp = out[i][:0]
		relayBufs.Put(bp)
	}
	return err
}

// via is the path a path frame arrived on.
type via struct {
	kind  PathKind
	from  netip.AddrPort // direct: the sender; TURN: the peer's relayed address
	relay *relayClient
}

// handle handles a path frame b from from on the receive path. For a
// relayed WireGuard datagram it returns the peer that sent it and the
// datagram.
func (p *Paths) handle(b []byte, from netip.AddrPort, now time.Time) (*peerEndpoint, []byte) {
	f, err := parsePathFrame(b)
	if err != nil {
		p.counters.malformed.Add(1)
		return nil, nil
	}
	t := p.tables.Load()
	switch f.typ {
	case framePing, framePong:
		p.probe(f, via{kind: PathDirect, from: from}, now)
	case frameBound, frameRefused:
		rc := t.relays[from]
		if rc == nil {
			p.counters.notFromRelay.Add(1)
			return nil, nil
		}
		p.relayAnswer(rc, f, now)
	case frameRecv:
		rc := t.relays[from]
		if rc == nil {
			p.counters.notFromRelay.Add(1)
			return nil, nil
		}
		e := t.byTag[f.tag]
		if e == nil {
			p.counters.unknownPeer.Add(1)
			return nil, nil
		}
		if f.payload[0] == PathMagic {
			if inner, err := parsePathFrame(f.payload); err == nil && (inner.typ == framePing || inner.typ == framePong) && inner.key.Equal(e.key) {
				p.probe(inner, via{kind: PathRelay, relay: rc}, now)
			} else {
				p.counters.malformed.Add(1)
			}
			return nil, nil
		}
		e.lastRx.Store(now.UnixNano())
		return e, f.payload
	default:
		p.counters.malformed.Add(1)
	}
	return nil, nil
}

// fromTURN handles a datagram that came through the TURN allocation from
// a peer's relayed address. It owns pkt.
func (p *Paths) fromTURN(pkt []byte, from netip.AddrPort) {
	now := time.Now()
	if len(pkt) > 0 && pkt[0] == PathMagic {
		f, err := parsePathFrame(pkt)
		if err != nil || (f.typ != framePing && f.typ != framePong) {
			p.counters.malformed.Add(1)
			return
		}
		p.probe(f, via{kind: PathTURN, from: from}, now)
		return
	}
	e := p.tables.Load().byTURN[from]
	if e == nil {
		p.counters.unknownPeer.Add(1)
		return
	}
	e.lastRx.Store(now.UnixNano())
	if !p.b.inject(pkt, e) {
		p.counters.injectDrops.Add(1)
	}
}

// probe handles a ping or pong that arrived over v.
func (p *Paths) probe(f pathFrame, v via, now time.Time) {
	e := p.tables.Load().byKey[f.key]
	if e == nil { // refused before any crypto
		p.counters.unknownPeer.Add(1)
		return
	}
	if !f.verify(&e.mac) {
		p.counters.badMAC.Add(1)
		return
	}
	if f.typ == framePing {
		if !e.pongs.AllowN(now, 1) {
			p.counters.pongsLimited.Add(1)
			return
		}
		p.counters.pings.Add(1)
		pong := appendPong(make([]byte, 0, pongSize), &e.mac, p.pub, f.txid, v.from)
		p.sendVia(e, v, pong)
		if v.kind == PathDirect {
			p.learn(e, v.from)
		}
		return
	}
	p.counters.pongs.Add(1)
	p.mu.Lock()
	sp, ok := e.pings[f.txid]
	if !ok || !sp.path.matches(v) {
		p.mu.Unlock()
		p.counters.unsolicited.Add(1)
		return
	}
	delete(e.pings, f.txid)
	s := sp.path
	s.lastPong, s.rtt, s.missed = now, now.Sub(sp.at), 0
	if s.kind == PathDirect {
		e.punchUntil = time.Time{}
	}
	p.choose(e, now)
	w := p.waits[f.txid]
	delete(p.waits, f.txid)
	p.mu.Unlock()
	if w != nil {
		w <- PingResult{Path: s.kind, Endpoint: s.target(), Relay: s.relayKey(), RTT: s.rtt}
	}
}

func (s *pathState) matches(v via) bool {
	switch s.kind {
	case PathRelay:
		return v.kind == PathRelay && v.relay == s.relay
	default:
		return v.kind == s.kind && v.from == s.addr
	}
}

// target is where datagrams on the path are sent.
func (s *pathState) target() netip.AddrPort {
	if s.kind == PathRelay {
		return s.relay.srv.Addr
	}
	return s.addr
}

func (s *pathState) relayKey() identity.WGPublicKey {
	if s.kind == PathRelay {
		return s.relay.srv.PublicKey
	}
	return identity.WGPublicKey{}
}

// learn adds from, where an authenticated ping came from, to e's
// candidates (a peer-reflexive address: a NAT's mapping towards this
// node), and pings it at once.
func (p *Paths) learn(e *peerEndpoint, from netip.AddrPort) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if find(e.direct, from) != nil || !e.known {
		return
	}
	learned := 0
	for _, s := range e.direct {
		if s.learned {
			learned++
		}
	}
	if learned >= maxLearned || len(e.direct) >= maxCandidates {
		// Drop the oldest learned address that is not alive.
		i := slices.IndexFunc(e.direct, func(s *pathState) bool { return s.learned && !s.alive(time.Now()) })
		if i < 0 {
			return
		}
		e.direct = slices.Delete(e.direct, i, i+1)
	}
	s := &pathState{kind: PathDirect, addr: from, ep: &conn.StdNetEndpoint{AddrPort: from}, learned: true}
	e.direct = append(e.direct, s)
	p.counters.learned.Add(1)
	p.rebuild()
	now := time.Now()
	p.ping(e, s, now)
	// A peer with no path now has one to try: WireGuard's answer to the
	// handshake that follows this ping must not wait for the pong.
	p.choose(e, now)
}

// sendVia sends a path frame to e over v.
func (p *Paths) sendVia(e *peerEndpoint, v via, frame []byte) {
	switch v.kind {
	case PathDirect:
		_ = p.b.sendRaw(v.from, frame)
	case PathRelay:
		_ = p.sendRelay(v.relay, e.tag, [][]byte{frame})
	case PathTURN:
		if p.turn != nil {
			_ = p.turn.send([][]byte{frame}, v.from)
		}
	}
}

// ping sends a ping on path s to e. Called with p.mu held.
func (p *Paths) ping(e *peerEndpoint, s *pathState, now time.Time) [txidSize]byte {
	var txid [txidSize]byte
	rand.Read(txid[:])
	if len(e.pings) >= maxOutstanding {
		p.expire(e, now, true)
	}
	e.pings[txid] = sentPing{path: s, at: now}
	s.lastPing = now
	frame := appendPing(make([]byte, 0, pingSize), &e.mac, p.pub, txid)
	v := via{kind: s.kind, from: s.addr, relay: s.relay}
	p.counters.pingsSent.Add(1)
	// Sending blocks at most briefly (a UDP write; TURN's first write to
	// a peer waits for its permission): acceptable under p.mu, which only
	// the manager and the probe handlers take.
	p.sendVia(e, v, frame)
	return txid
}

// expire counts the pings of e that went unanswered; all of them with
// force. Called with p.mu held.
func (p *Paths) expire(e *peerEndpoint, now time.Time, force bool) {
	for id, sp := range e.pings {
		if force || now.Sub(sp.at) > pingTimeout {
			delete(e.pings, id)
			sp.path.missed++
			if w := p.waits[id]; w != nil {
				delete(p.waits, id)
				close(w)
			}
		}
	}
}

// loop is the manager: it pings, binds to relays and chooses routes.
func (p *Paths) loop() {
	tick := time.NewTicker(pathTick)
	defer tick.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-tick.C:
		case <-p.wake:
		}
		now := time.Now()
		p.mu.Lock()
		for _, rc := range p.relays {
			p.tendRelay(rc, now)
		}
		for _, e := range p.peers {
			if e.known {
				p.tend(e, now)
			}
		}
		p.mu.Unlock()
	}
}

// tend pings what e's paths need, and chooses e's route. Called with
// p.mu held.
func (p *Paths) tend(e *peerEndpoint, now time.Time) {
	p.expire(e, now, false)
	active := now.Sub(time.Unix(0, e.lastTx.Load())) < activeFor
	every := keepalive
	if active {
		every = heartbeat
	}
	r := e.cur.Load()
	var inUse *pathState
	if r != nil {
		inUse = r.path
	}
	directAlive := false
	for _, s := range e.direct {
		if s.alive(now) {
			directAlive = true
		}
	}
	switch {
	case now.Before(e.punchUntil) && !now.Before(e.nextPunch):
		for _, s := range e.direct {
			p.ping(e, s, now)
		}
		e.nextPunch = now.Add(punchEvery)
	case !directAlive && !now.Before(e.nextProbe):
		for _, s := range e.direct {
			p.ping(e, s, now)
		}
		e.nextProbe = now.Add(e.probeEvery)
		e.probeEvery = min(2*e.probeEvery, probeMax)
	}
	for _, s := range e.direct {
		if (s.alive(now) || s.stale(now)) && now.Sub(s.lastPing) >= every {
			p.ping(e, s, now)
		}
	}
	for _, s := range e.relays {
		if s.relay.bound && now.Sub(s.lastPing) >= keepalive || s == inUse && now.Sub(s.lastPing) >= every {
			p.ping(e, s, now)
		}
	}
	if s := e.turn; s != nil && p.turn.ready() {
		if now.Sub(s.lastPing) >= keepalive || s == inUse && now.Sub(s.lastPing) >= every {
			p.ping(e, s, now)
		}
	}
	p.choose(e, now)
}

// choose sets e's route: the best confirmed path. Called with p.mu held.
func (p *Paths) choose(e *peerEndpoint, now time.Time) {
	var best, stale *pathState
	for _, s := range e.direct {
		if s.alive(now) && (best == nil || s.rtt < best.rtt) {
			best = s
		}
		if s.stale(now) && (stale == nil || s.lastPong.After(stale.lastPong)) {
			stale = s
		}
	}
	next := &route{kind: PathNone}
	if best != nil {
		next = &route{kind: PathDirect, path: best, to: best.addr, ep: best.ep}
	} else {
		var relay *pathState
		for _, s := range e.relays {
			if !s.relay.bound || now.Sub(s.unknown) < unknownFor {
				continue
			}
			if relay == nil || s.alive(now) && (!relay.alive(now) || s.rtt < relay.rtt) {
				relay = s
			}
		}
		switch {
		case relay != nil:
			next = &route{kind: PathRelay, path: relay, to: relay.relay.srv.Addr, ep: relay.relay.ep, relay: relay.relay, also: stale}
		case e.turn != nil && p.turn.ready():
			next = &route{kind: PathTURN, path: e.turn, to: e.turn.addr, also: stale}
		case stale != nil:
			next = &route{kind: PathDirect, path: stale, to: stale.addr, ep: stale.ep}
		default:
			for _, s := range e.direct {
				if len(next.spray) == maxSprayed {
					break
				}
				next.spray = append(next.spray, s.ep)
			}
			if len(next.spray) > 0 {
				next.to = e.direct[0].addr
			} else {
				next = nil
			}
		}
	}
	prev := e.cur.Load()
	if prev != nil && next != nil && prev.kind == next.kind && prev.path == next.path && prev.also == next.also && len(prev.spray) == len(next.spray) {
		return
	}
	if prev == nil && next == nil {
		return
	}
	wasDirect := prev != nil && prev.kind == PathDirect && prev.path != nil
	isDirect := next != nil && next.kind == PathDirect && next.path != nil
	switch {
	case isDirect && !wasDirect:
		e.upgrades++
		p.counters.upgrades.Add(1)
	case wasDirect && !isDirect:
		e.fallbacks++
		p.counters.fallbacks.Add(1)
	}
	e.cur.Store(next)
	if next != nil {
		p.log.Debug("path", "peer", e.key.ShortString(), "path", next.kind, "endpoint", next.to)
	}
	if next != nil && next.path != nil && (prev == nil || prev.path == nil) {
		p.resendInit(e)
	}
}

// noteInit keeps WireGuard's handshake initiation to e.
func (e *peerEndpoint) noteInit(b []byte) {
	e.initMu.Lock()
	e.lastInit = append(e.lastInit[:0], b...)
	e.initAt = time.Now()
	e.initMu.Unlock()
}

// resendInit sends WireGuard's last initiation to e again on the path
// just confirmed, if it is recent: sent before any path was, it was
// probably lost (a punching NAT drops what comes before its own host
// has sent), and WireGuard would retry only after 5 s. If it was not
// lost, the peer refuses the copy as a replay.
func (p *Paths) resendInit(e *peerEndpoint) {
	e.initMu.Lock()
	pkt := bytes.Clone(e.lastInit)
	at := e.initAt
	e.initMu.Unlock()
	if pkt == nil || time.Since(at) >= rekeyTimeout {
		return
	}
	p.counters.resentInits.Add(1)
	_ = p.send(e, [][]byte{pkt})
}

// PingResult is the answer to a ping: the path it took and its round trip.
type PingResult struct {
	Path     PathKind
	Endpoint netip.AddrPort       // the address the ping was sent to
	Relay    identity.WGPublicKey // the relay's key, for PathRelay
	RTT      time.Duration
}

// Ping sends a ping to pub on the path in use, or on all of its paths if
// none is, and returns the first pong's path and round trip, as
// `tailscale ping` does. It blocks until a pong, ctx's end, or 5 s.
func (p *Paths) Ping(ctx context.Context, pub identity.WGPublicKey) (PingResult, error) {
	p.mu.Lock()
	e := p.peers[pub]
	if e == nil || !e.known {
		p.mu.Unlock()
		return PingResult{}, fmt.Errorf("%w: %s", ErrUnknownPeer, pub.ShortString())
	}
	if len(p.waits) >= maxPathsWaiting {
		p.mu.Unlock()
		return PingResult{}, errors.New("overlay: ping: too many pings waiting")
	}
	now := time.Now()
	var paths []*pathState
	if r := e.cur.Load(); r != nil && r.path != nil {
		paths = append(paths, r.path)
	} else {
		paths = append(append(paths, e.direct...), e.relays...)
		if e.turn != nil && p.turn.ready() {
			paths = append(paths, e.turn)
		}
	}
	if len(paths) == 0 {
		p.mu.Unlock()
		return PingResult{}, fmt.Errorf("%w %s", ErrNoPath, pub.ShortString())
	}
	w := make(chan PingResult, 1)
	var ids [][txidSize]byte
	for _, s := range paths {
		if s.kind == PathRelay && !s.relay.bound {
			continue
		}
		id := p.ping(e, s, now)
		p.waits[id] = w
		ids = append(ids, id)
	}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		for _, id := range ids {
			if p.waits[id] == w {
				delete(p.waits, id)
			}
		}
		p.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	select {
	case r, ok := <-w:
		if !ok {
			return PingResult{}, fmt.Errorf("overlay: ping %s: no pong", pub.ShortString())
		}
		return r, nil
	case <-ctx.Done():
		return PingResult{}, fmt.Errorf("overlay: ping %s: %w", pub.ShortString(), ctx.Err())
	}
}

// PeerPathStatus is how a managed peer is reached.
type PeerPathStatus struct {
	PublicKey identity.WGPublicKey
	// Path is the kind of path in use; PathNone while datagrams go to
	// every candidate, none confirmed.
	Path PathKind
	// Endpoint is where datagrams go: the peer's address (direct), the
	// relay's (relay), the peer's relayed address (TURN).
	Endpoint netip.AddrPort
	Relay    identity.WGPublicKey // the relay in use, for PathRelay
	RTT      time.Duration        // of the path in use, from its last pong
	LastPong time.Time            // on the path in use; zero if none
	LastRx   time.Time            // any datagram from the peer
	// Upgrades and Fallbacks count moves onto and off a direct path.
	Upgrades, Fallbacks uint64
	Paths               []PathStatus
}

// PathStatus is one path to a peer.
type PathStatus struct {
	Kind     PathKind
	Addr     netip.AddrPort // where it sends
	Relay    identity.WGPublicKey
	Learned  bool // a direct address learned from the peer's ping
	Alive    bool // a pong within the last 6.5 s
	RTT      time.Duration
	LastPong time.Time
}

// Status reports every managed peer's paths, in no particular order.
func (p *Paths) Status() []PeerPathStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	out := make([]PeerPathStatus, 0, len(p.peers))
	for _, e := range p.peers {
		st := PeerPathStatus{PublicKey: e.key, Path: PathNone, Upgrades: e.upgrades, Fallbacks: e.fallbacks}
		if rx := e.lastRx.Load(); rx != 0 {
			st.LastRx = time.Unix(0, rx)
		}
		if r := e.cur.Load(); r != nil {
			st.Endpoint = r.to
			if r.path != nil {
				st.Path, st.RTT, st.LastPong, st.Relay = r.kind, r.path.rtt, r.path.lastPong, r.path.relayKey()
			}
		}
		for _, group := range [][]*pathState{e.direct, e.relays, {e.turn}} {
			for _, s := range group {
				if s == nil {
					continue
				}
				st.Paths = append(st.Paths, PathStatus{Kind: s.kind, Addr: s.target(), Relay: s.relayKey(),
					Learned: s.learned, Alive: s.alive(now), RTT: s.rtt, LastPong: s.lastPong})
			}
		}
		out = append(out, st)
	}
	return out
}

// PeerStatus reports one managed peer's paths.
func (p *Paths) PeerStatus(pub identity.WGPublicKey) (PeerPathStatus, bool) {
	for _, st := range p.Status() {
		if st.PublicKey.Equal(pub) {
			return st, true
		}
	}
	return PeerPathStatus{}, false
}

type pathCounters struct {
	pings, pongs, pingsSent, learned, punches, upgrades, fallbacks   atomic.Uint64
	malformed, unknownPeer, badMAC, unsolicited, pongsLimited        atomic.Uint64
	notFromRelay, noPath, injectDrops, relayRefusals, relayRebinding atomic.Uint64
	resentInits                                                      atomic.Uint64
}

// PathsStats counts what Paths did and refused.
type PathsStats struct {
	PingsSent, PingsAnswered, Pongs uint64
	Learned                         uint64 // candidates learned from pings
	Punches                         uint64
	Upgrades, Fallbacks             uint64
	// Refused path frames, by reason.
	Malformed, UnknownPeer, BadMAC, Unsolicited, PongsLimited, NotFromRelay uint64
	NoPath                                                                  uint64 // datagrams for a peer with no path
	InjectDrops                                                             uint64 // TURN datagrams dropped on a full queue
	RelayRefusals                                                           uint64 // sends a relay refused
	// ResentInits counts WireGuard initiations sent again when a peer's
	// first path was confirmed.
	ResentInits uint64
}

// Stats reports the counters.
func (p *Paths) Stats() PathsStats {
	c := &p.counters
	return PathsStats{
		PingsSent: c.pingsSent.Load(), PingsAnswered: c.pings.Load(), Pongs: c.pongs.Load(),
		Learned: c.learned.Load(), Punches: c.punches.Load(), Upgrades: c.upgrades.Load(), Fallbacks: c.fallbacks.Load(),
		Malformed: c.malformed.Load(), UnknownPeer: c.unknownPeer.Load(), BadMAC: c.badMAC.Load(),
		Unsolicited: c.unsolicited.Load(), PongsLimited: c.pongsLimited.Load(), NotFromRelay: c.notFromRelay.Load(),
		NoPath: c.noPath.Load(), InjectDrops: c.injectDrops.Load(), RelayRefusals: c.relayRefusals.Load(),
		ResentInits: c.resentInits.Load(),
	}
}
