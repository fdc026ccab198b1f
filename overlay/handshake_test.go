package overlay

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/agent6/agent6/identity"
)

func initMsg(sender uint32) []byte {
	b := make([]byte, wgInitiationSize)
	b[0] = wgInitiation
	binary.LittleEndian.PutUint32(b[4:], sender)
	return b
}

func respMsg(sender, receiver uint32) []byte {
	b := make([]byte, wgResponseSize)
	b[0] = wgResponse
	binary.LittleEndian.PutUint32(b[4:], sender)
	binary.LittleEndian.PutUint32(b[8:], receiver)
	return b
}

func endpoint(s string) conn.Endpoint {
	return &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort(s)}
}

// The side with the larger sender index holds the peer's crossing
// initiation until its own is answered, then drops it; the other side
// delivers at once. Nothing is held without an initiation of ours in
// flight to that endpoint, nor after crossHold.
func TestCrossingTieBreak(t *testing.T) {
	p, q := endpoint("127.0.0.1:1000"), endpoint("127.0.0.1:2000")
	now := time.Now()
	answer := func(c *handshakes, ep conn.Endpoint, index uint32) { c.responded(respMsg(1, index), ep) }

	c := newHandshakes(nil)
	if c.received(initMsg(5), p, now) {
		t.Fatal("held an initiation with none of ours in flight")
	}
	answer(c, p, 5)
	c.initiated(initMsg(100), p, now)
	if c.received(initMsg(200), p, now) {
		t.Fatal("held an initiation with a larger index than ours")
	}
	if c.received(initMsg(5), p, now) {
		t.Fatal("held an initiation after delivering one: ours was discarded")
	}
	answer(c, p, 5)

	c.initiated(initMsg(100), p, now)
	c.initiated(initMsg(100), q, now.Add(-2*crossHold))
	if c.received(initMsg(50), q, now) {
		t.Fatal("held an initiation after ours had had crossHold for its answer")
	}
	if !c.received(initMsg(50), p, now) {
		t.Fatal("did not hold a crossing initiation with a smaller index")
	}
	if !c.received(initMsg(60), p, now) { // a newer one replaces it
		t.Fatal("did not hold the peer's newer crossing initiation")
	}
	if c.received(respMsg(7, 99), p, now) || c.stats().CrossAnswered != 0 {
		t.Fatal("a response to another initiation ended the hold")
	}
	if c.received(respMsg(7, 100), p, now) {
		t.Fatal("held a response")
	}
	if st := c.stats(); st != (HandshakeStats{CrossHeld: 1, CrossAnswered: 1}) {
		t.Fatalf("stats %+v, want one held and answered", st)
	}
	if len(c.held) != 0 || c.sent.len() != 0 {
		t.Fatalf("left %d held, %d in flight", len(c.held), c.sent.len())
	}
	if c.received(initMsg(5), p, now) {
		t.Fatal("held an initiation after ours was answered")
	}
	for _, b := range [][]byte{initMsg(1)[:100], {wgInitiation, 0, 0, 0}, append(initMsg(1), 0)} {
		if c.received(b, p, now) {
			t.Fatalf("held a %d-byte message", len(b))
		}
	}
}

// While WireGuard holds a peer's initiation unanswered, an initiation of
// ours to that endpoint, which consuming the peer's would discard, is held:
// dropped when WireGuard answers, sent after crossHold if it does not.
func TestCrossingSuperseded(t *testing.T) {
	p, q := endpoint("127.0.0.1:1000"), endpoint("127.0.0.1:2000")
	sent := make(chan []byte, 2)
	c := newHandshakes(func(pkt []byte, ep conn.Endpoint) error {
		if ep != q {
			t.Errorf("sent to %v, want %v", ep, q)
		}
		sent <- pkt
		return nil
	})
	now := time.Now()
	c.received(initMsg(7), p, now)
	if c.initiated(initMsg(100), p, now.Add(10*time.Millisecond)) ||
		c.initiated(initMsg(101), p, now.Add(20*time.Millisecond)) {
		t.Fatal("sent an initiation while WireGuard had the peer's to answer")
	}
	if c.sent.len() != 0 {
		t.Fatal("recorded an initiation not sent")
	}
	c.responded(respMsg(3, 99), p) // not the answer to the peer's
	if c.stats().CrossSuperseded != 0 {
		t.Fatal("an answer to another initiation superseded ours")
	}
	c.responded(respMsg(3, 7), p)
	if !c.initiated(initMsg(102), p, now.Add(30*time.Millisecond)) {
		t.Fatal("did not send an initiation once WireGuard had answered the peer's")
	}

	// No answer: ours goes out crossHold after it was made.
	then := time.Now().Add(-crossHold + 20*time.Millisecond)
	c.received(initMsg(8), q, then)
	if c.initiated(initMsg(103), q, then) {
		t.Fatal("sent an initiation while WireGuard had the peer's to answer")
	}
	select {
	case pkt := <-sent:
		if string(pkt) != string(initMsg(103)) {
			t.Fatalf("sent % x, want our held initiation", pkt)
		}
	case <-time.After(time.Second):
		t.Fatal("our held initiation was never sent")
	}
	c.mu.Lock()
	s, _ := c.sent.get(q.(*conn.StdNetEndpoint).AddrPort)
	c.mu.Unlock()
	if s.index != 103 {
		t.Fatalf("in flight to q: %+v, want our initiation 103", s)
	}
	if st := c.stats(); st != (HandshakeStats{CrossSuperseded: 1, CrossSentLate: 1}) {
		t.Fatalf("stats %+v, want one superseded, one sent late", st)
	}
}

// An initiation held for an answer that does not come is delivered through
// the bind's extra receive function once ours has had crossHold.
func TestCrossingRelease(t *testing.T) {
	p := endpoint("127.0.0.1:1000")
	c := newHandshakes(nil)
	done := make(chan struct{})
	recv := c.receiveFunc(done)

	c.initiated(initMsg(100), p, time.Now().Add(-crossHold+20*time.Millisecond))
	held := initMsg(50)
	if !c.received(held, p, time.Now()) {
		t.Fatal("did not hold")
	}
	bufs, sizes, eps := [][]byte{make([]byte, 1500)}, []int{0}, []conn.Endpoint{nil}
	n, err := recv(bufs, sizes, eps)
	if err != nil || n != 1 || sizes[0] != len(held) || string(bufs[0][:sizes[0]]) != string(held) || eps[0] != p {
		t.Fatalf("released %d packets (%d bytes from %v), %v", n, sizes[0], eps[0], err)
	}
	if st := c.stats(); st != (HandshakeStats{CrossHeld: 1, CrossReleased: 1}) {
		t.Fatalf("stats %+v, want one held and released", st)
	}
	// Delivering it discarded ours: the next initiation is not held.
	if c.received(initMsg(5), p, time.Now()) {
		t.Fatal("held an initiation after releasing one")
	}
	close(done)
	if _, err := recv(bufs, sizes, eps); err != net.ErrClosed {
		t.Fatalf("receive after close: %v, want net.ErrClosed", err)
	}
}

// crossingRelay stands between two WireGuard devices on loopback. It
// forwards nothing until it has a handshake initiation from each side,
// then everything, each datagram d later: the two initiations cross on
// the wire however the scheduler ran the devices. A sends to AddrA and
// hears from it; B likewise with AddrB.
type crossingRelay struct {
	ca, cb *net.UDPConn
	wg     sync.WaitGroup

	mu    sync.Mutex
	seen  [2]bool  // an initiation from A, from B
	gated []func() // forwards waiting for both
}

func newCrossingRelay(t *testing.T, d time.Duration, a, b netip.AddrPort) *crossingRelay {
	t.Helper()
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	r := &crossingRelay{ca: listen(), cb: listen()}
	forward := func(side int, from, to *net.UDPConn, dst netip.AddrPort) {
		defer r.wg.Done()
		buf := make([]byte, 65535)
		for {
			n, err := from.Read(buf)
			if err != nil {
				return
			}
			pkt := append([]byte(nil), buf[:n]...)
			send := func() { time.AfterFunc(d, func() { to.WriteToUDPAddrPort(pkt, dst) }) }
			r.mu.Lock()
			if handshakeType(pkt) == wgInitiation {
				r.seen[side] = true
			}
			if r.seen[0] && r.seen[1] {
				gated := r.gated
				r.gated = nil
				r.mu.Unlock()
				for _, f := range gated {
					f()
				}
				send()
				continue
			}
			r.gated = append(r.gated, send)
			r.mu.Unlock()
		}
	}
	r.wg.Add(2)
	go forward(0, r.ca, r.cb, b)
	go forward(1, r.cb, r.ca, a)
	t.Cleanup(func() { r.ca.Close(); r.cb.Close(); r.wg.Wait() })
	return r
}

func (r *crossingRelay) AddrA() netip.AddrPort { return r.ca.LocalAddr().(*net.UDPAddr).AddrPort() }
func (r *crossingRelay) AddrB() netip.AddrPort { return r.cb.LocalAddr().(*net.UDPAddr).AddrPort() }

type crossNode struct {
	key  identity.WGPrivateKey
	dev  *Device
	ns   *Netstack
	bind *Bind
	port uint16
}

// newCrossNode starts a device on a netstack with the Agent6 Bind; log,
// if given, receives its log at debug level.
func newCrossNode(t *testing.T, log ...*slog.Logger) *crossNode {
	t.Helper()
	k, _ := identity.GeneratePrivateKey()
	n := &crossNode{key: k.WireGuard(), bind: NewBind()}
	backend, ns, err := NewNetstack(n.key.Public().Addr(), 1420)
	if err != nil {
		t.Fatal(err)
	}
	n.ns = ns
	cfg := Config{PrivateKey: n.key, Bind: n.bind}
	if len(log) > 0 {
		cfg.Logger = log[0]
	}
	if n.dev, err = NewDevice(backend, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.dev.Close() })
	if n.port, err = n.dev.ListenPort(); err != nil {
		t.Fatal(err)
	}
	return n
}

// Two devices whose first initiations cross on the wire (100 ms each way)
// complete one handshake at once instead of refusing each other's
// response and waiting wireguard-go's 5 s retry: the side with the larger
// sender index held the other's initiation until its own was answered.
// Repeated, since each round's indices, and so the side that holds, are
// random.
func TestCrossedHandshakesComplete(t *testing.T) {
	for round := range 3 {
		a, b := newCrossNode(t), newCrossNode(t)
		loop := netip.MustParseAddr("127.0.0.1")
		r := newCrossingRelay(t, 100*time.Millisecond, netip.AddrPortFrom(loop, a.port), netip.AddrPortFrom(loop, b.port))
		if err := a.dev.SetPeer(PeerConfig{PublicKey: b.key.Public(), Endpoint: r.AddrA()}); err != nil {
			t.Fatal(err)
		}
		if err := b.dev.SetPeer(PeerConfig{PublicKey: a.key.Public(), Endpoint: r.AddrB()}); err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 2)
		for _, n := range []*crossNode{a, b} {
			pc, err := n.ns.ListenUDP(netip.AddrPortFrom(n.key.Public().Addr(), 9))
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			go func() {
				buf := make([]byte, 64)
				pc.SetReadDeadline(time.Now().Add(10 * time.Second))
				k, _, err := pc.ReadFrom(buf)
				if err != nil {
					got <- err.Error()
					return
				}
				got <- string(buf[:k])
			}()
		}
		start := time.Now()
		var wg sync.WaitGroup
		for _, pair := range [][2]*crossNode{{a, b}, {b, a}} {
			wg.Go(func() {
				c, err := pair[0].ns.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(pair[1].key.Public().Addr(), 9))
				if err != nil {
					t.Error(err)
					return
				}
				defer c.Close()
				c.Write([]byte("hello"))
			})
		}
		wg.Wait()
		for range 2 {
			if msg := <-got; msg != "hello" {
				t.Fatalf("round %d: %s", round, msg)
			}
		}
		took := time.Since(start)
		sa, sb := a.bind.HandshakeStats(), b.bind.HandshakeStats()
		t.Logf("round %d: both ways in %v; crossing stats %+v, %+v", round, took.Round(time.Millisecond), sa, sb)
		if took >= 5*time.Second {
			t.Errorf("round %d: first packets took %v: the handshakes crossed and waited for the retry", round, took)
		}
		if sa.CrossHeld+sb.CrossHeld != 1 || sa.CrossAnswered+sb.CrossAnswered+sa.CrossReleased+sb.CrossReleased != 1 {
			t.Errorf("round %d: crossing stats %+v, %+v; want one initiation held, then answered or released", round, sa, sb)
		}
	}
}

// The last initiation delivered from an endpoint is handed to WireGuard
// again, once, when a peer is added there within rekeyTimeout.
func TestRedeliver(t *testing.T) {
	p := endpoint("127.0.0.1:1000")
	h := newHandshakes(nil)
	done := make(chan struct{})
	defer close(done)
	recv := h.receiveFunc(done)
	t0 := time.Now()

	h.received(initMsg(7), p, t0)
	h.received(initMsg(8), p, t0) // the newer one is kept
	h.redeliver(netip.MustParseAddrPort("[::ffff:127.0.0.1]:1000"), t0.Add(time.Second))
	bufs, sizes, eps := [][]byte{make([]byte, 1500)}, []int{0}, []conn.Endpoint{nil}
	if n, err := recv(bufs, sizes, eps); n != 1 || err != nil || string(bufs[0][:sizes[0]]) != string(initMsg(8)) || eps[0] != p {
		t.Fatalf("redelivered %d (%d bytes from %v), %v; want the newer initiation", n, sizes[0], eps[0], err)
	}
	h.redeliver(p.(*conn.StdNetEndpoint).AddrPort, t0.Add(time.Second))
	h.received(initMsg(9), endpoint("127.0.0.1:2000"), t0)
	h.redeliver(netip.MustParseAddrPort("127.0.0.1:2000"), t0.Add(rekeyTimeout))
	if len(h.ready) != 0 || h.stats().Redelivered != 1 {
		t.Fatalf("%d more redelivered (%+v); want none twice, none after rekeyTimeout", len(h.ready), h.stats())
	}
}

// An initiation that reaches a device before it has the sender as a peer
// is dropped by wireguard-go; when the peer is added it is redelivered, and
// the handshake completes without the sender's 5 s retry.
func TestInitiationBeforePeerRedelivered(t *testing.T) {
	dropped := make(chan struct{}, 1)
	a, b := newCrossNode(t), newCrossNode(t, slog.New(onMessage{"Received invalid initiation message", dropped}))
	loop := netip.MustParseAddr("127.0.0.1")
	if err := a.dev.SetPeer(PeerConfig{PublicKey: b.key.Public(), Endpoint: netip.AddrPortFrom(loop, b.port)}); err != nil {
		t.Fatal(err)
	}
	pc, err := b.ns.ListenUDP(netip.AddrPortFrom(b.key.Public().Addr(), 9))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	start := time.Now()
	c, err := a.ns.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(b.key.Public().Addr(), 9))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	// Wait until b's WireGuard, without a peer for a, has dropped a's
	// initiation: added before that, the peer would get it the usual way.
	select {
	case <-dropped:
	case <-time.After(3 * time.Second):
		t.Fatal("b's WireGuard never refused a's initiation")
	}
	if err := b.dev.SetPeer(PeerConfig{PublicKey: a.key.Public(), Endpoint: netip.AddrPortFrom(loop, a.port)}); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	k, _, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:k]) != "hello" {
		t.Fatalf("read %q, %v", buf[:k], err)
	}
	took := time.Since(start)
	t.Logf("first packet in %v; b's handshake stats %+v", took.Round(time.Millisecond), b.bind.HandshakeStats())
	if took >= rekeyTimeout {
		t.Errorf("first packet took %v: a waited for its retry", took)
	}
	if st := b.bind.HandshakeStats(); st.Redelivered != 1 {
		t.Errorf("b's stats %+v, want one initiation redelivered", st)
	}
}

// A redelivered initiation meets the crossing check when it is handed to
// WireGuard: if this node has initiated to that endpoint since it arrived,
// with the larger index, it is held like any crossing one.
func TestRedeliveredCrossing(t *testing.T) {
	p := endpoint("127.0.0.1:1000")
	h := newHandshakes(nil)
	done := make(chan struct{})
	now := time.Now()
	// Before the peer was added, 2 s ago: dropped by WireGuard, unanswered.
	h.received(initMsg(7), p, now.Add(-2*crossHold))
	if !h.initiated(initMsg(100), p, now) { // the peer added, this node initiates
		t.Fatal("initiation not sent")
	}
	h.redeliver(p.(*conn.StdNetEndpoint).AddrPort, now)
	errc := make(chan error, 1)
	go func() {
		_, err := h.receiveFunc(done)([][]byte{make([]byte, 1500)}, []int{0}, []conn.Endpoint{nil})
		errc <- err
	}()
	for h.stats().CrossHeld == 0 {
		select {
		case err := <-errc:
			t.Fatalf("handed over (%v) instead of held", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	h.received(respMsg(1, 100), p, time.Now())
	close(done)
	if err := <-errc; err != net.ErrClosed {
		t.Fatalf("receive: %v, want net.ErrClosed", err)
	}
	if st := h.stats(); st != (HandshakeStats{CrossHeld: 1, CrossAnswered: 1}) {
		t.Fatalf("stats %+v, want one held and answered, none redelivered", st)
	}
}

// Whatever arrives on the socket, the handshake tables neither panic nor
// hold anything but a well-formed initiation that crosses one of ours.
func FuzzHandshakes(f *testing.F) {
	f.Add(initMsg(5), uint32(100))
	f.Add(respMsg(1, 100), uint32(100))
	f.Add([]byte{wgInitiation, 0, 0, 0}, uint32(0))
	f.Add(make([]byte, wgResponseSize), uint32(7))
	f.Fuzz(func(t *testing.T, b []byte, ours uint32) {
		h := newHandshakes(nil)
		p := endpoint("127.0.0.1:1000")
		now := time.Now()
		h.initiated(initMsg(ours), p, now)
		held := h.received(b, p, now)
		want := handshakeType(b) == wgInitiation && binary.LittleEndian.Uint32(b[4:]) < ours
		if held != want {
			t.Fatalf("held = %v for % x against our index %d", held, b, ours)
		}
		h.redeliver(netip.MustParseAddrPort("127.0.0.1:1000"), now)
		h.mu.Lock() // a held one's release timer may fire
		defer h.mu.Unlock()
		if len(h.held) > 1 || h.sent.len() > 1 || h.last.len() > 1 || h.queued.len() > 1 {
			t.Fatalf("tables grew: %d held, %d sent, %d last, %d queued", len(h.held), h.sent.len(), h.last.len(), h.queued.len())
		}
	})
}

// onMessage is a slog handler that signals c when a record's message
// starts with prefix.
type onMessage struct {
	prefix string
	c      chan struct{}
}

func (h onMessage) Enabled(context.Context, slog.Level) bool { return true }
func (h onMessage) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h onMessage) WithGroup(string) slog.Handler            { return h }
func (h onMessage) Handle(_ context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "wireguard: "+h.prefix) {
		select {
		case h.c <- struct{}{}:
		default:
		}
	}
	return nil
}
