package gossip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/membership"
)

// cluster is n gossiping instances in this process; instance 0 is the seed
// the others join through. Its methods may block briefly and are called
// from one goroutine.
type cluster interface {
	// seesAlive returns how many of the other instances instance i sees
	// alive.
	seesAlive(i int) int
	// missing returns how instance i sees the instances it does not see
	// alive: index → state, as state reports it.
	missing(i int) map[int]string
	// state returns how instance i sees instance j: "alive", "suspect",
	// "dead", "left", or "gone" if it no longer lists it.
	state(i, j int) string
	// hasPeer reports whether instance i still has instance j as a
	// WireGuard peer; always false for bare memberlist.
	hasPeer(i, j int) bool
	// sessions returns how many pairs of instances have a WireGuard
	// session; 0 for bare memberlist.
	sessions() int
	// wireBytes returns the bytes every instance has sent on the underlay
	// (UDP and TCP payload) so far.
	wireBytes() uint64
	// transport returns instance i's memberlist transport.
	transport(i int) *transport
	// stats sums the membership counters of every instance; zero for bare
	// memberlist.
	stats() membership.Stats
	// filterDrops sums the packets every instance's filter dropped, by
	// reason; nil for bare memberlist.
	filterDrops() map[string]uint64
	// handshakes sums what every instance's bind did for first WireGuard
	// handshakes; nil for bare memberlist.
	handshakes() *node.HandshakeStatus
	// pushPull makes instance i push/pull with instance j, as a join does.
	pushPull(ctx context.Context, i, j int) error
	// crash silences instance i's gossip, then stops it: its leave, if it
	// tries one, reaches no one.
	crash(i int) error
	// leave makes instance i leave gracefully and stop.
	leave(i int) error
	// close stops every instance still running.
	close()
}

// closeParallel bounds the instances closed at once: a close waits up to
// a second for its leave message to go out.
const closeParallel = 32

// waves paces the start of the nodes after the seed: Size at a time,
// Gap apart; a zero Size starts them all at once.
type waves struct {
	Size int
	Gap  time.Duration
}

// startAll calls start for nodes 1 to n-1, each in its own goroutine, a
// wave at a time, and waits for them all.
func startAll(ctx context.Context, n int, w waves, start func(i int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 1; i < n; i++ {
		if w.Size > 0 && i > 1 && (i-1)%w.Size == 0 && !sleep(ctx, w.Gap) {
			break
		}
		wg.Go(func() { errs[i] = start(i) })
	}
	wg.Wait()
	return errors.Join(append(errs, ctx.Err())...)
}

// agent6 is a cluster of embedded agent6 nodes with one CA.
type agent6 struct {
	nodes []*node.Node
	trs   []*transport
	addrs []netip.Addr
	keys  []identity.WGPublicKey
	left  []bool
}

var _ cluster = (*agent6)(nil)

// startAgent6 starts the seed, then the other n-1 nodes, all at once or in
// waves, each joining through the seed's token. It returns when every node's Up has
// returned, with the time the joins started.
func startAgent6(ctx context.Context, n int, w waves, tune func(*memberlist.Config), logger *slog.Logger) (*agent6, time.Time, error) {
	ca, err := identity.NewCA("bench.example", 24*time.Hour, time.Now())
	if err != nil {
		return nil, time.Time{}, err
	}
	bundle, err := identity.ParseBundle(ca.CertificatePEM())
	if err != nil {
		return nil, time.Time{}, err
	}
	c := &agent6{
		nodes: make([]*node.Node, n),
		trs:   make([]*transport, n),
		addrs: make([]netip.Addr, n),
		keys:  make([]identity.WGPublicKey, n),
		left:  make([]bool, n),
	}
	// Keys and credentials first, so the clock measures gossip only.
	for i := range n {
		k, err := identity.GeneratePrivateKey()
		if err != nil {
			return nil, time.Time{}, err
		}
		der, err := ca.Issue(identity.IssueRequest{Key: k.Public(), Name: "agent-" + strconv.Itoa(i), TTL: time.Hour}, time.Now())
		if err != nil {
			return nil, time.Time{}, err
		}
		nd := &node.Node{
			Key:        k,
			Credential: der,
			Bundle:     bundle,
			Endpoints:  []netip.AddrPort{netip.AddrPortFrom(loopback, 0)},
			TuneGossip: func(mc *memberlist.Config) {
				tune(mc)
				c.trs[i] = wrapTransport(mc.Transport)
				mc.Transport = c.trs[i]
			},
		}
		if logger != nil {
			nd.Logger = logger.With("node", i)
		}
		c.nodes[i] = nd
		c.keys[i] = k.WireGuard().Public()
		c.addrs[i] = c.keys[i].Addr()
	}
	if err := c.nodes[0].Up(ctx); err != nil {
		return nil, time.Time{}, fmt.Errorf("seed: %w", err)
	}
	tok, err := c.nodes[0].Invite()
	if err != nil {
		c.close()
		return nil, time.Time{}, err
	}
	t0 := time.Now()
	err = startAll(ctx, n, w, func(i int) error {
		c.nodes[i].Join = []string{tok}
		return c.nodes[i].Up(ctx)
	})
	if err != nil {
		c.close()
		return nil, time.Time{}, err
	}
	return c, t0, nil
}

func (c *agent6) seesAlive(i int) int {
	k := 0
	for _, m := range c.nodes[i].Members() {
		if m.State == "alive" {
			k++
		}
	}
	return k
}

func (c *agent6) missing(i int) map[int]string {
	states := make(map[netip.Addr]string)
	for _, m := range c.nodes[i].Members() {
		states[m.Addr] = m.State
	}
	out := make(map[int]string)
	for j, a := range c.addrs {
		if s, ok := states[a]; j != i && s != "alive" {
			if !ok {
				s = "gone"
			}
			out[j] = s
		}
	}
	return out
}

func (c *agent6) state(i, j int) string {
	for _, m := range c.nodes[i].Members() {
		if m.Addr == c.addrs[j] {
			return m.State
		}
	}
	return "gone"
}

func (c *agent6) hasPeer(i, j int) bool {
	st, err := c.nodes[i].Status()
	if err != nil {
		return false
	}
	for _, p := range st.Peers {
		if p.PublicKey.Equal(c.keys[j]) {
			return true
		}
	}
	return false
}

// wireBytes sums WireGuard's tx bytes over every peer of every node:
// gossip inside the tunnel with its IPv6, UDP and TCP headers, WireGuard's
// framing, handshakes and keepalives. The control frames that admit a
// peer are sent outside WireGuard and not counted.
func (c *agent6) wireBytes() uint64 {
	var sum uint64
	c.eachStatus(func(st node.Status) {
		for _, p := range st.Peers {
			sum += p.TxBytes
		}
	})
	return sum
}

// sessions counts the pairs with a completed WireGuard handshake: each
// side lists the other with a last handshake.
func (c *agent6) sessions() int {
	sides := 0
	c.eachStatus(func(st node.Status) {
		for _, p := range st.Peers {
			if p.LastHandshake != nil {
				sides++
			}
		}
	})
	return (sides + 1) / 2
}

// eachStatus calls fn with the status of every node still running.
func (c *agent6) eachStatus(fn func(node.Status)) {
	for i, n := range c.nodes {
		if c.left[i] {
			continue
		}
		if st, err := n.Status(); err == nil {
			fn(st)
		}
	}
}

func (c *agent6) transport(i int) *transport { return c.trs[i] }

func (c *agent6) stats() membership.Stats {
	sum := membership.Stats{Refused: make(map[membership.Reason]uint64)}
	for i, n := range c.nodes {
		m := n.Membership()
		if c.left[i] || m == nil {
			continue
		}
		s := m.Stats()
		sum.Members += s.Members
		sum.Hellos += s.Hellos
		sum.Admitted += s.Admitted
		sum.Removed += s.Removed
		sum.CatchUps += s.CatchUps
		for r, v := range s.Refused {
			sum.Refused[r] += v
		}
	}
	return sum
}

func (c *agent6) filterDrops() map[string]uint64 {
	sum := make(map[string]uint64)
	c.eachStatus(func(st node.Status) {
		for r, v := range st.Filter.Drops {
			sum[r] += v
		}
	})
	return sum
}

func (c *agent6) handshakes() *node.HandshakeStatus {
	var sum node.HandshakeStatus
	c.eachStatus(func(st node.Status) { sum = sum.Plus(st.Handshakes) })
	return &sum
}

// pushPull joins node i through node j's token: a HELLO (answered at once,
// as they are peers already) and a memberlist push/pull.
func (c *agent6) pushPull(ctx context.Context, i, j int) error {
	tok, err := c.nodes[j].Invite()
	if err != nil {
		return err
	}
	t, err := membership.ParseToken(tok)
	if err != nil {
		return err
	}
	m := c.nodes[i].Membership()
	if m == nil {
		return errors.New("gossip: node without membership")
	}
	return m.Join(ctx, []membership.Token{t})
}

// crash mutes node i's gossip, then closes it: Node.Close's Leave goes
// nowhere, and the WireGuard device and its UDP socket close, as when the
// process dies.
func (c *agent6) crash(i int) error {
	c.trs[i].mute()
	c.left[i] = true
	// Membership closed first: Node.Close then has no one to say LEAVE
	// for it, as after kill -9.
	if m := c.nodes[i].Membership(); m != nil {
		m.Close()
	}
	return c.nodes[i].Close()
}

func (c *agent6) leave(i int) error {
	c.left[i] = true
	return c.nodes[i].Close()
}

// close mutes every node's gossip, so that the leaves do not set off work
// in the nodes still running, then closes the nodes, a few at a time.
func (c *agent6) close() {
	for _, t := range c.trs {
		if t != nil {
			t.mute()
		}
	}
	sem := make(chan struct{}, closeParallel)
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		if c.left[i] || n == nil {
			continue
		}
		c.left[i] = true
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			n.Close()
		})
	}
	wg.Wait()
}

// bare is a cluster of plain memberlist instances on 127.0.0.1.
type bare struct {
	mls  []*memberlist.Memberlist
	trs  []*transport
	left []bool

	stop context.CancelFunc
	wg   sync.WaitGroup // the join loops
}

var _ cluster = (*bare)(nil)

// startBare starts the seed, then the other n-1 instances, all at once or
// in waves, each joining through the seed; a failed join is retried with agent6's
// backoff (0.5 s, doubling, at most 30 s). It returns when every instance
// is created, with the time the joins started.
func startBare(ctx context.Context, n int, w waves, tune func(*memberlist.Config)) (*bare, time.Time, error) {
	jctx, stop := context.WithCancel(context.Background())
	c := &bare{mls: make([]*memberlist.Memberlist, n), trs: make([]*transport, n), left: make([]bool, n), stop: stop}
	if err := c.create(0, tune); err != nil {
		c.close()
		return nil, time.Time{}, fmt.Errorf("seed: %w", err)
	}
	seed := c.mls[0].LocalNode().Address()
	t0 := time.Now()
	err := startAll(ctx, n, w, func(i int) error {
		if err := c.create(i, tune); err != nil {
			return err
		}
		c.wg.Go(func() { c.join(jctx, i, seed) })
		return nil
	})
	if err != nil {
		c.close()
		return nil, time.Time{}, err
	}
	return c, t0, ctx.Err()
}

// create makes instance i on 127.0.0.1 and a free port.
func (c *bare) create(i int, tune func(*memberlist.Config)) error {
	quiet := log.New(io.Discard, "", 0)
	var nt *memberlist.NetTransport
	var err error
	for range 10 { // port 0 picks a TCP port; its UDP twin may be taken
		nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{loopback.String()}, Logger: quiet})
		if err == nil {
			break
		}
	}
	if err != nil {
		return err
	}
	mc := memberlist.DefaultLANConfig()
	tune(mc)
	mc.Name = "m" + strconv.Itoa(i)
	mc.BindAddr = loopback.String()
	mc.BindPort = 0
	mc.AdvertiseAddr = ""
	mc.Logger = quiet
	c.trs[i] = wrapTransport(nt)
	mc.Transport = c.trs[i]
	ml, err := memberlist.Create(mc)
	if err != nil {
		c.trs[i].Shutdown()
		c.trs[i] = nil
		return err
	}
	c.mls[i] = ml
	return nil
}

func (c *bare) join(ctx context.Context, i int, seed string) {
	backoff := 500 * time.Millisecond
	for {
		if _, err := c.mls[i].Join([]string{seed}); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func (c *bare) seesAlive(i int) int {
	k := 0
	for _, m := range c.mls[i].Members() {
		if m.State == memberlist.StateAlive {
			k++
		}
	}
	return k - 1 // itself
}

func (c *bare) missing(i int) map[int]string {
	states := make(map[string]string)
	for _, m := range c.mls[i].Members() {
		states[m.Name] = "alive"
		if m.State == memberlist.StateSuspect {
			states[m.Name] = "suspect"
		}
	}
	out := make(map[int]string)
	for j := range c.mls {
		if s, ok := states["m"+strconv.Itoa(j)]; j != i && s != "alive" {
			if !ok {
				s = "gone"
			}
			out[j] = s
		}
	}
	return out
}

func (c *bare) state(i, j int) string {
	name := "m" + strconv.Itoa(j)
	for _, m := range c.mls[i].Members() { // all but the dead and the left
		if m.Name == name {
			if m.State == memberlist.StateSuspect {
				return "suspect"
			}
			return "alive"
		}
	}
	return "gone"
}

func (c *bare) hasPeer(i, j int) bool { return false }

func (c *bare) sessions() int { return 0 }

// wireBytes is what memberlist wrote: UDP and TCP payload.
func (c *bare) wireBytes() uint64 {
	var sum uint64
	for i, t := range c.trs {
		if t != nil && !c.left[i] {
			sum += t.bytes()
		}
	}
	return sum
}

func (c *bare) transport(i int) *transport { return c.trs[i] }

func (c *bare) stats() membership.Stats { return membership.Stats{} }

func (c *bare) filterDrops() map[string]uint64 { return nil }

func (c *bare) handshakes() *node.HandshakeStatus { return nil }

func (c *bare) pushPull(_ context.Context, i, j int) error {
	_, err := c.mls[i].Join([]string{c.mls[j].LocalNode().Address()})
	return err
}

func (c *bare) crash(i int) error {
	c.trs[i].mute()
	c.left[i] = true
	return c.mls[i].Shutdown()
}

func (c *bare) leave(i int) error {
	c.left[i] = true
	err := c.mls[i].Leave(time.Second)
	return errors.Join(err, c.mls[i].Shutdown())
}

func (c *bare) close() {
	c.stop()
	c.wg.Wait()
	for _, t := range c.trs {
		if t != nil {
			t.mute()
		}
	}
	sem := make(chan struct{}, closeParallel)
	var wg sync.WaitGroup
	for i, ml := range c.mls {
		if c.left[i] {
			continue
		}
		c.left[i] = true
		if ml == nil {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ml.Shutdown()
		})
	}
	wg.Wait()
}
