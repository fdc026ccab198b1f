// Package membership is Agent6's gossip layer: hashicorp/memberlist running
// inside the overlay, with admission control. A node is admitted — made a
// WireGuard peer — only when its signed AgentRecord verifies, its address
// is derived from its key, its Ed25519 key maps to its WireGuard key, and
// its X.509 credential chains to the trust bundle, unexpired and unrevoked.
//
// Records reach a node three ways:
//   - HELLO/ACK control frames on the node's UDP socket (outside WireGuard,
//     since the sender is not yet a peer): a joining node sends its record to
//     the token's node; a node that learns of another through gossip sends it
//     a HELLO, and the ACK carries the other's record. Both ends admit each
//     other in one round trip, before either sends a WireGuard handshake.
//     Each frame is signed by its sender over a fresh timestamp (and an ACK
//     over the nonce of the HELLO it answers), so a captured frame cannot
//     be replayed to move an agent's endpoint (frames.go).
//   - memberlist node meta (≤512 bytes): a compact signed summary (sequence
//     number, record digest, endpoints) that tells a node when to ask.
//   - push/pull anti-entropy: memberlist's state carries every node's meta;
//     our own state adds every revocation.
//
// Who holds each overlay address — this node, its tasks, other agents and
// their tasks — is one table (ids.go) with its invariants enforced where
// entries are added; WhoIs, DNS, Discover and the WireGuard peers all read
// it. Frames from the network are rate-limited per source before any
// signature check (limit.go), and queued apart from events that arrived
// through WireGuard, so a flood of the first never drops the second.
//
// Refusals are counted by Reason and logged (at most once per reason every
// 10 s), never fatal. docs/threat-model.md says what each kind of attacker
// can and cannot do.
package membership

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"golang.org/x/time/rate"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node/card"
)

// DefaultPort is the gossip port on each node's overlay address.
const DefaultPort = 7946

// Peers is the WireGuard peer table as membership drives it. Calls may
// block briefly; they are made from one goroutine.
type Peers interface {
	// SetPeer adds or updates a peer whose AllowedIPs are its own derived
	// address plus extra (the addresses of its delegated tasks).
	SetPeer(key identity.WGPublicKey, endpoint netip.AddrPort, extra []netip.Prefix) error
	// AllowTask adds (allow) or removes one task address to or from an
	// existing peer's AllowedIPs, leaving the rest as they are.
	AllowTask(key identity.WGPublicKey, task netip.Addr, allow bool) error
	RemovePeer(key identity.WGPublicKey) error
	// Received returns how many bytes WireGuard has received from each of
	// its peers: authenticated traffic only, so a rise is proof of life
	// that no gossip can fake or miss.
	Received() (map[identity.WGPublicKey]uint64, error)
	// Await holds the packets this node sends to addr until EndAwait:
	// membership has asked the agent there for its record, and WireGuard
	// has no peer for it yet. EndAwait with deliver sends them (the peer
	// now exists), without drops them.
	Await(addr netip.Addr)
	EndAwait(addr netip.Addr, deliver bool)
}

// Control sends control frames on the node's UDP socket (outside
// WireGuard). It must not block and is safe for concurrent use.
type Control interface {
	SendControl(to netip.AddrPort, frame []byte) error
}

// Config configures a Membership. Network, Peers, Control, Key,
// Credential and Bundle are required.
type Config struct {
	Key        identity.PrivateKey
	Credential []byte           // this agent's X.509 certificate, DER
	Card       *card.Card       // this agent's card; nil for none
	Bundle     *identity.Bundle // trust domains this node accepts
	// Endpoints are the UDP addresses others may reach this node at
	// (at most 4 are advertised).
	Endpoints []netip.AddrPort
	Port      uint16 // gossip port; 0 means DefaultPort
	MTU       int    // overlay MTU, to size gossip packets; 0 means 1420
	Network   Network
	Peers     Peers
	Control   Control
	Logger    *slog.Logger
	// Tune, if set, adjusts memberlist's configuration (timing for tests
	// and benchmarks) before it starts.
	Tune func(*memberlist.Config)
	// SweepInterval is how often expired credentials are looked for
	// (default 30 s).
	SweepInterval time.Duration
	// ReconnectInterval is how often a peer memberlist declared dead is
	// sent a HELLO (default 10 s; the first ones go out 1, 2, 4, 8 and
	// 16 s after its removal), for DeadForget (default 1 h) after which it
	// is forgotten. A node wrongly declared dead — under load, or
	// across a brief partition — answers, is re-admitted, and memberlist
	// hears its refutation; without this, removing dead peers from
	// WireGuard would make a false positive permanent.
	ReconnectInterval time.Duration
	DeadForget        time.Duration
	// OnPeerRemoved, if set, is called (from the actor; it must not block)
	// when an admitted peer is removed: its task deliveries are void.
	OnPeerRemoved func(addr netip.Addr)
	// MaxTasksPerPeer bounds the tasks of one peer this node accepts
	// (default 256); beyond it a delegation is refused (task_limit).
	MaxTasksPerPeer int
	// StateDir, if set, is where the peers this node knew are remembered
	// (known-peers.json), so that a restarted node asks them back at once
	// instead of waiting for them to ask it.
	StateDir string
}

// Member is one known agent, as `agent6 peers` shows it.
type Member struct {
	Addr        netip.Addr           `json:"address"`
	PublicKey   identity.WGPublicKey `json:"public_key"`
	ID          string               `json:"spiffe_id"`
	TrustDomain string               `json:"trust_domain"`
	Groups      []string             `json:"groups,omitempty"`
	Roles       []string             `json:"roles,omitempty"`
	// State is alive, dead, left, revoked, expired or pending (see
	// State for the lifecycle; admitted but not yet listed by memberlist
	// also shows as pending). memberlist
	// v0.7.0 does not tell its users that a node is suspect (the State of
	// the Nodes it hands out is never set: hashicorp/memberlist#293), so
	// a suspect node shows as alive; "suspect" appears if it ever does.
	State    string         `json:"state"`
	Endpoint netip.AddrPort `json:"endpoint"`
	Expires  time.Time      `json:"expires"`
	Card     *card.Card     `json:"card,omitempty"`
}

// Stats are membership's counters.
type Stats struct {
	Members  int               `json:"members"` // admitted peers, not counting this node
	Refused  map[Reason]uint64 `json:"refused"`
	Hellos   uint64            `json:"hellos_sent"`
	Admitted uint64            `json:"admissions"`
	Removed  uint64            `json:"removals"`
	// CatchUps counts push/pulls that repair what gossip lost: with an
	// admitted peer whose alive message never arrived (see catchUp), and
	// with a peer declared dead a second ago (see checkDead).
	CatchUps uint64 `json:"catch_ups"`
	// DeathsOverruled counts peers memberlist declared dead that were kept
	// because WireGuard kept receiving from them (see removeDead).
	DeathsOverruled uint64 `json:"deaths_overruled"`
	// Revoked is set when this node learned that its own credential is
	// revoked (a peer refused it with the CA-signed revocation, or gossip
	// brought it): it stops trying to join.
	Revoked *identity.Revocation `json:"revoked,omitempty"`
}

// Membership runs gossip for one node. Its methods are safe for concurrent
// use.
type Membership struct {
	cfg   Config
	log   *slog.Logger
	addr  netip.Addr
	wgKey identity.WGPublicKey
	cred  *identity.Credential

	tr    *transport
	ml    *memberlist.Memberlist
	bcast *memberlist.TransmitLimitedQueue

	// The actor goroutine alone changes the identity table and calls
	// Peers. It reads two queues: ctrl, frames from the network not yet
	// authenticated; events, what came through WireGuard or from
	// memberlist. mu guards the state it shares with readers.
	ctrl      chan event
	events    chan event
	ctrlLimit *sourceLimiter // admission frames, per UDP source
	peerLimit *sourceLimiter // peer frames, per overlay source
	askLimit  *rate.Limiter  // HELLOs to agents gossip announced

	mu     sync.Mutex
	seq    uint64
	own    []byte // own signed AgentRecord
	ownDig [16]byte
	ids    idTable
	// refused remembers digests of records refused for a lasting reason, so
	// the same bytes are not verified again. Bounded by maxRefused.
	refused map[[16]byte]Reason
	revs    revocations
	waiters map[identity.WGPublicKey]chan struct{} // joins waiting for an ACK
	// asked are the HELLOs this node sent and awaits an ACK for, by nonce
	// (an ACK that echoes none is refused as unknown_response).
	asked *expiring[nonce, askedHello]
	// lastTS is the last timestamp this node put on a signed frame: each is
	// later than the one before, as receivers require.
	lastTS int64
	// knownMembers is how many members memberlist listed at the last
	// catch-up tick, and gossipNewsAt when that last grew (see catchUp).
	knownMembers int
	gossipNewsAt time.Time
	// metaCache holds verified node meta by its bytes (one entry per
	// node, tracked by metaByAddr), so repeated alive messages cost a map
	// lookup, not a signature check.
	metaCache  map[string]*meta
	metaByAddr map[netip.Addr]string
	keyAddr    map[[32]byte]netip.Addr // signer key → address (signerAddr)
	// asking are agents sent a HELLO because gossip announced them, not
	// yet admitted, by when they were asked; packets to them are held
	// (Peers.Await) until admitted or awaitTimeout.
	asking map[netip.Addr]time.Time
	// revoked is this node's own credential's revocation, once known.
	revoked *identity.Revocation
	// known remembers peers across restarts (StateDir).
	known knownPeers

	tasksvc *taskService
	leaving atomic.Bool     // set by Leave
	rejoin  chan netip.Addr // revived or unheard-of peers to push/pull with
	mlConf  *memberlist.Config

	refusals sync.Map // Reason → *atomic.Uint64
	logged   sync.Map // Reason → *atomic.Int64, unix nanos of its last log line
	hellos   atomic.Uint64
	admits   atomic.Uint64
	catchUps atomic.Uint64
	removes  atomic.Uint64
	overrule atomic.Uint64

	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

type peer struct {
	rec       *record
	cred      *identity.Credential
	endpoint  netip.AddrPort
	state     State
	helloAt   time.Time // when this node last sent it a HELLO
	helloTS   int64     // the last admission frame timestamp accepted from it
	deadSince time.Time // when memberlist declared it dead; zero otherwise
	deadCheck bool      // a push/pull asked for since it was declared dead
	deadRx    uint64    // bytes WireGuard had received from it when it was declared dead
	// reconnectAt is when a removed dead peer is next sent a HELLO, and
	// reconnectGap the gap before that one (see helloDead).
	reconnectAt  time.Time
	reconnectGap time.Duration
	admittedAt   time.Time
	catchUpAt    time.Time // last push/pull asked for because memberlist had not heard of it
	catchUps     int       // such push/pulls since memberlist last knew it
	tasks        map[netip.Addr]*remoteTask
	recent       recent // peer frames accepted from it, against replays
}

func (p *peer) admitted() bool { return p.state.Admitted() }

const (
	maxRefused = 4096
	helloEvery = 2 * time.Second // per peer, at most
	// awaitTimeout is how long packets to an agent asked for its record
	// are held: its answer normally takes one round trip.
	awaitTimeout = 2 * time.Second
	eventsQueue  = 4096 // memberlist events and peer frames
	ctrlQueue    = 1024 // admission frames from the network
	// maxAgents bounds the agents this node keeps records of (admitted or
	// not); a verified record beyond it is refused as overload.
	maxAgents = 1 << 16
	// askRate bounds the HELLOs sent to agents that gossip announced and
	// this node does not know: an insider gossiping made-up agents cannot
	// make it send more (each is ~1 KB to an endpoint the gossip names).
	askRate, askBurst = 200, 400
	// askedTTL is how long an ACK is awaited for a HELLO, and maxAsked how
	// many HELLOs may await one.
	askedTTL = 30 * time.Second
	maxAsked = 8192
	// defaultMaxTasks is Config.MaxTasksPerPeer's default.
	defaultMaxTasks = 256
)

// askedHello is a HELLO this node sent: where to, and when.
type askedHello struct {
	to netip.AddrPort
	at time.Time
}

// New checks the configuration, including that this node's own credential
// verifies against the bundle and belongs to its key.
func New(cfg Config) (*Membership, error) {
	switch {
	case cfg.Network == nil || cfg.Peers == nil || cfg.Control == nil:
		return nil, errors.New("membership: Network, Peers and Control are required")
	case cfg.Key.IsZero():
		return nil, errors.New("membership: Key is required")
	case cfg.Bundle == nil:
		return nil, errors.New("membership: a trust bundle is required")
	case len(cfg.Credential) == 0:
		return nil, errors.New("membership: a credential is required")
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1420
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = 30 * time.Second
	}
	if cfg.ReconnectInterval == 0 {
		cfg.ReconnectInterval = 10 * time.Second
	}
	if cfg.DeadForget == 0 {
		cfg.DeadForget = time.Hour
	}
	if cfg.MaxTasksPerPeer <= 0 {
		cfg.MaxTasksPerPeer = defaultMaxTasks
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cred, err := cfg.Bundle.Verify(cfg.Credential, time.Now())
	if err != nil {
		return nil, fmt.Errorf("membership: this node's credential: %w", err)
	}
	if !cred.AgentKey.Equal(cfg.Key.Public()) {
		return nil, fmt.Errorf("membership: this node's credential is for agent key %s, not this node's key %s", cred.AgentKey, cfg.Key.Public())
	}
	if len(cfg.Endpoints) > maxEndpoints {
		cfg.Endpoints = cfg.Endpoints[:maxEndpoints]
	}
	wg := cfg.Key.WireGuard().Public()
	m := &Membership{
		cfg:       cfg,
		log:       log,
		addr:      wg.Addr(),
		wgKey:     wg,
		cred:      cred,
		ctrl:      make(chan event, ctrlQueue),
		events:    make(chan event, eventsQueue),
		ctrlLimit: newSourceLimiter(ctrlPerSource, ctrlBurst, ctrlTotal, ctrlTotalBurst, maxSources),
		peerLimit: newSourceLimiter(peerPerSource, peerBurst, peerTotal, peerTotalBurst, maxSources),
		askLimit:  rate.NewLimiter(askRate, askBurst),
		ids:       newIDTable(wg.Addr()),
		refused:   make(map[[16]byte]Reason),
		revs:      newRevocations(),
		waiters:   make(map[identity.WGPublicKey]chan struct{}),
		asked:     newExpiring[nonce, askedHello](maxAsked),
		rejoin:    make(chan netip.Addr, 64),

		metaCache:  make(map[string]*meta),
		metaByAddr: make(map[netip.Addr]string),
		keyAddr:    make(map[[32]byte]netip.Addr),
		asking:     make(map[netip.Addr]time.Time),
		known:      knownPeers{path: knownPeersPath(cfg.StateDir)},
		done:       make(chan struct{}),
	}
	if err := m.resign(); err != nil {
		return nil, err
	}
	return m, nil
}

// resign makes a new own record with a higher sequence number.
func (m *Membership) resign() error {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq = max(m.seq+1, uint64(now.UnixNano()))
	var cardJSON []byte
	if m.cfg.Card != nil {
		var err error
		if cardJSON, err = m.cfg.Card.Marshal(); err != nil {
			return fmt.Errorf("membership: card: %w", err)
		}
	}
	raw, err := newRecord(m.cfg.Key, m.seq, m.cfg.Credential, m.cfg.Endpoints, cardJSON, now)
	if err != nil {
		return fmt.Errorf("membership: sign record: %w", err)
	}
	m.own, m.ownDig = raw, digestOf(raw)
	return nil
}

// Start starts gossip on the overlay. The Network must be up.
func (m *Membership) Start() error {
	tr, err := newTransport(m.cfg.Network, m.addr, m.cfg.Port)
	if err != nil {
		return err
	}
	m.tr = tr
	c := memberlist.DefaultLANConfig()
	c.Name = nodeName(m.addr)
	c.BindAddr = m.addr.String()
	c.BindPort = int(m.cfg.Port)
	c.AdvertiseAddr = m.addr.String()
	c.AdvertisePort = int(m.cfg.Port)
	c.Transport = tr
	c.Delegate = (*delegate)(m)
	c.Events = (*delegate)(m)
	c.Alive = (*delegate)(m)
	c.UDPBufferSize = gossipPacketSize(m.cfg.MTU)
	// Gossip inside WireGuard is small and already encrypted; memberlist's
	// LZW compression cost a third of the CPU of a 200-node join storm in
	// the gossip benchmark, for little saving.
	c.EnableCompression = false
	c.Logger = newMemberlistLogger(m.log)
	if m.cfg.Tune != nil {
		m.cfg.Tune(c)
	}
	m.mlConf = c
	ml, err := memberlist.Create(c)
	if err != nil {
		tr.Shutdown()
		return fmt.Errorf("membership: start memberlist: %w", err)
	}
	m.ml = ml
	m.bcast = &memberlist.TransmitLimitedQueue{NumNodes: ml.NumMembers, RetransmitMult: c.RetransmitMult}
	// The actor starts once ml is set: it reads ml. Events memberlist
	// raised while starting wait in the queue.
	m.wg.Go(m.actor)
	m.wg.Go(m.rejoinLoop)
	if err := m.startTaskService(); err != nil {
		m.Close()
		return err
	}
	m.log.Info("gossip up", "addr", m.addr, "port", m.cfg.Port, "trust_domain", m.cred.TrustDomain, "spiffe_id", m.cred.ID)
	m.greetKnown()
	return nil
}

// nodeName is a node's memberlist name: its address, written out in full.
// Not the compressed form: memberlist v0.7.0, when a name equals the bare
// IP text of its address, reads the node's protocol version outside its
// lock (rawSendMsgPacket), a data race the race detector reports.
func nodeName(a netip.Addr) string { return a.StringExpanded() }

// gossipFragments is how many IPv6 fragments inside the tunnel one gossip
// packet may take. memberlist packs as many broadcasts into a packet as
// fit; an alive message here carries ~150 bytes of signed meta and a
// 39-byte name (bare memberlist's: ~60 bytes in all), so one MTU-sized
// packet held ~5 of them and a 100-node join storm took 12 s to spread
// instead of 2. Four fragments restore the capacity; the overlay's IPv6
// fragments and reassembles them (gVisor or the kernel), and a lost
// fragment loses one gossip packet, which gossip's redundancy absorbs.
const gossipFragments = 4

// gossipPacketSize is the largest UDP payload memberlist sends inside a
// tunnel of the given MTU: gossipFragments fragments, each carrying
// MTU − 40 (IPv6) − 8 (fragment header) bytes rounded down to 8, less the
// 8-byte UDP header.
func gossipPacketSize(mtu int) int {
	return gossipFragments*((mtu-48)&^7) - 8
}

// Addr returns this node's overlay address.
func (m *Membership) Addr() netip.Addr { return m.addr }

// Credential returns this node's verified credential.
func (m *Membership) Credential() *identity.Credential { return m.cred }

// Revoked returns the revocation of this node's own credential, once this
// node has learnt of it, or nil.
func (m *Membership) Revoked() *identity.Revocation {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.revoked
}

// Join joins the cluster through any of the tokens, retrying with backoff
// until one works or ctx is done. It gives up with ErrRevoked once this
// node learns that its credential is revoked.
func (m *Membership) Join(ctx context.Context, tokens []Token) error {
	if len(tokens) == 0 {
		return nil
	}
	backoff := 500 * time.Millisecond
	var last error
	for {
		for _, t := range tokens {
			if t.Key.Equal(m.wgKey) {
				continue // our own token: we are a seed
			}
			if rev := m.Revoked(); rev != nil {
				return fmt.Errorf("%w: %w (serial %s)", ErrJoin, ErrRevoked, rev.Serial)
			}
			if last = m.joinOne(ctx, t); last == nil {
				return nil
			}
			m.log.Warn("join attempt failed", "peer", t.Key.ShortString(), "endpoint", t.Endpoint, "err", last)
		}
		if last == nil { // only our own token: nothing to join
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v (last: %v)", ErrJoin, ctx.Err(), last)
		case <-m.done:
			return fmt.Errorf("%w: %w", ErrJoin, net.ErrClosed)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

func (m *Membership) joinOne(ctx context.Context, t Token) error {
	ack := make(chan struct{})
	m.mu.Lock()
	m.waiters[t.Key] = ack
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		if m.waiters[t.Key] == ack {
			delete(m.waiters, t.Key)
		}
		m.mu.Unlock()
	}()
	// HELLO until the token's node answers and is admitted.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; ; i++ {
		if m.Revoked() != nil {
			return ErrRevoked
		}
		if err := m.sendHello(t.Endpoint); err != nil {
			return err
		}
		select {
		case <-ack:
		case <-tick.C:
			if i < 4 {
				continue
			}
			return fmt.Errorf("no answer from %s", t.Endpoint)
		case <-ctx.Done():
			return ctx.Err()
		case <-m.done:
			return net.ErrClosed
		}
		break
	}
	return m.pushPullHedged(ctx, t.Key.Addr())
}

// Members returns every agent this node knows of, admitted or not, sorted
// by address.
func (m *Membership) Members() []Member {
	states := make(map[string]string)
	if m.ml != nil {
		for _, n := range m.ml.Members() {
			states[n.Name] = stateName(n.State)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Member, 0, len(m.ids.agents))
	for addr, p := range m.ids.agents {
		mb := p.member(addr)
		if p.admitted() {
			if s, ok := states[nodeName(addr)]; ok {
				mb.State = s
			} else if p.state == StateDead {
				mb.State = StateDead.String() // declared dead; its WireGuard peer goes after a grace
			} else {
				// Admitted (it answered a HELLO) but not alive in
				// memberlist: pending until gossip agrees, and removed by
				// the reconciliation if it never does.
				mb.State = StatePending.String()
			}
		}
		out = append(out, mb)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Less(out[j].Addr) })
	return out
}

// Lookup returns what membership knows of the agent at addr, without
// asking memberlist.
func (m *Membership) Lookup(addr netip.Addr) (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.ids.agents[addr]
	if p == nil {
		return Member{}, false
	}
	return p.member(addr), true
}

// Holder says who holds an overlay address (see Resolve).
type Holder struct {
	Kind Kind
	// Member is the agent: the holder for KindAgent, the owner for
	// KindTask; zero for KindSelf and KindLocalTask (the node knows
	// itself).
	Member Member
	// Task describes a peer's task (KindTask).
	Task *TaskInfo
}

// Resolve says who holds addr, from the identity table: this node, one of
// its tasks, another agent (admitted or not: see Member.State) or another
// agent's task. It reports false for an address nobody known holds.
func (m *Membership) Resolve(addr netip.Addr) (Holder, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch k := m.ids.kind(addr); k {
	case KindSelf, KindLocalTask:
		return Holder{Kind: k}, true
	case KindAgent:
		return Holder{Kind: k, Member: m.ids.agents[addr].member(addr)}, true
	case KindTask:
		rt := m.ids.tasks[addr]
		info := rt.info
		h := Holder{Kind: k, Task: &info}
		if p := m.ids.agents[rt.owner]; p != nil {
			h.Member = p.member(rt.owner)
		}
		return h, true
	}
	return Holder{}, false
}

// ClaimLocal records addr as a task of this node in the identity table,
// refusing an address another agent or task holds. ReleaseLocal forgets it.
func (m *Membership) ClaimLocal(addr netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ids.claimLocal(addr)
}

// ReleaseLocal forgets a task of this node (see ClaimLocal).
func (m *Membership) ReleaseLocal(addr netip.Addr) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.ids.local, addr)
}

func (p *peer) member(addr netip.Addr) Member {
	mb := Member{Addr: addr, PublicKey: p.rec.wgKey, State: p.state.String(), Endpoint: p.endpoint, Card: p.rec.card}
	if p.cred != nil {
		mb.ID, mb.TrustDomain, mb.Groups, mb.Roles, mb.Expires = p.cred.ID, p.cred.TrustDomain, p.cred.Groups, p.cred.Roles, p.cred.NotAfter
	}
	return mb
}

// Stats returns membership's counters.
func (m *Membership) Stats() Stats {
	s := Stats{Refused: make(map[Reason]uint64), Hellos: m.hellos.Load(), Admitted: m.admits.Load(), Removed: m.removes.Load(),
		CatchUps: m.catchUps.Load(), DeathsOverruled: m.overrule.Load()}
	m.refusals.Range(func(k, v any) bool {
		s.Refused[k.(Reason)] = v.(*atomic.Uint64).Load()
		return true
	})
	m.mu.Lock()
	for _, p := range m.ids.agents {
		if p.admitted() {
			s.Members++
		}
	}
	s.Revoked = m.revoked
	m.mu.Unlock()
	return s
}

// Bundle returns the trust bundle this node verifies credentials with.
func (m *Membership) Bundle() *identity.Bundle { return m.cfg.Bundle }

// TrustDomains returns the trust domains this node accepts.
func (m *Membership) TrustDomains() []string { return m.cfg.Bundle.TrustDomains() }

// refuseLogEvery is how often, at most, a refusal of one reason is logged;
// every one is counted.
const refuseLogEvery = 10 * time.Second

// refuse counts a refusal by reason and logs it, at most once per reason
// every refuseLogEvery (with the count since), so that a flood of bad
// input costs a counter increment, not a log line.
func (m *Membership) refuse(err error, kv ...any) {
	r := reasonOf(err)
	if n, due := m.count(r); due {
		m.log.Warn("refused", append([]any{"reason", string(r), "err", err, "total", n}, kv...)...)
	}
}

// count counts one refusal for r and reports the total and whether it is
// due to be logged. It allocates only the first time a reason is seen.
func (m *Membership) count(r Reason) (n uint64, due bool) {
	v, ok := m.refusals.Load(r)
	if !ok {
		v, _ = m.refusals.LoadOrStore(r, new(atomic.Uint64))
	}
	n = v.(*atomic.Uint64).Add(1)
	l, ok := m.logged.Load(r)
	if !ok {
		l, _ = m.logged.LoadOrStore(r, new(atomic.Int64))
	}
	last := l.(*atomic.Int64)
	now := time.Now().UnixNano()
	prev := last.Load()
	return n, now-prev >= int64(refuseLogEvery) && last.CompareAndSwap(prev, now)
}

// Leave announces departure and waits up to timeout for it to spread.
func (m *Membership) Leave(timeout time.Duration) error {
	m.leaving.Store(true)
	select {
	case <-m.done: // closed: memberlist panics on Leave after Shutdown
		return nil
	default:
	}
	if m.ml == nil {
		return nil
	}
	m.sayLeaving()
	m.known.save(m.knownSnapshot(), m.log)
	return m.ml.Leave(timeout)
}

// sayLeaving tells every admitted peer, through WireGuard, that this node
// is leaving, so that each removes it at once and shows it as left. The
// LEAVE is signed: no other process on this host can say it for us.
func (m *Membership) sayLeaving() {
	if m.tasksvc == nil {
		return
	}
	m.mu.Lock()
	var to []netip.Addr
	for a, p := range m.ids.agents {
		if p.admitted() {
			to = append(to, a)
		}
	}
	m.mu.Unlock()
	for _, a := range to {
		m.sendPeer(a, frameLeave, nil)
	}
}

// Close stops gossip. It is idempotent.
func (m *Membership) Close() error {
	m.closeOnce.Do(func() {
		if m.ml != nil {
			m.ml.Shutdown()
		}
		if m.tasksvc != nil {
			m.tasksvc.pc.Close()
		}
		m.stop()
		if m.tr != nil {
			m.tr.Shutdown()
		}
	})
	return nil
}

func (m *Membership) stop() {
	select {
	case <-m.done:
	default:
		close(m.done)
	}
	m.wg.Wait()
}

// stateName names a memberlist state. The Nodes memberlist v0.7.0 lists
// always carry StateAlive (see Member.State).
func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateDead:
		return "dead"
	case memberlist.StateLeft:
		return "left"
	}
	return "unknown"
}

// memberlist logs through a *log.Logger with "[LEVEL] memberlist: ..."
// lines; mlWriter routes them to slog, rate-limited (see mllog.go).
type mlWriter struct{ *mlLog }

func newMemberlistLogger(l *slog.Logger) *stdlog.Logger {
	return stdlog.New(mlWriter{newMLLog(l)}, "", 0)
}

func (w mlWriter) Write(p []byte) (int, error) {
	w.write(string(bytes.TrimSpace(p)))
	return len(p), nil
}

// Gossip message types (user messages, inside memberlist).
const (
	msgRecord     = 1
	msgRevocation = 2
)

type broadcast struct {
	key string
	msg []byte
}

func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*broadcast)
	return ok && ob.key == b.key
}
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}

// encodeState frames records and revocations for push/pull:
// version(1) then kind(1) | uvarint length | bytes, repeated.
func encodeState(records, revocations [][]byte) []byte {
	var b bytes.Buffer
	b.WriteByte(1)
	put := func(kind byte, v []byte) {
		b.WriteByte(kind)
		b.Write(binary.AppendUvarint(nil, uint64(len(v))))
		b.Write(v)
	}
	for _, r := range records {
		put(stateRecord, r)
	}
	for _, r := range revocations {
		put(stateRevocation, r)
	}
	return b.Bytes()
}

const (
	stateRecord     = 1
	stateRevocation = 2
)

func decodeState(buf []byte, fn func(kind byte, v []byte)) error {
	if len(buf) == 0 {
		return nil
	}
	if buf[0] != 1 {
		return fmt.Errorf("state version %d", buf[0])
	}
	r := bytes.NewReader(buf[1:])
	for r.Len() > 0 {
		kind, _ := r.ReadByte()
		n, err := binary.ReadUvarint(r)
		if err != nil || n > uint64(r.Len()) {
			return errors.New("truncated state")
		}
		v := make([]byte, n)
		io.ReadFull(r, v)
		fn(kind, v)
	}
	return nil
}
