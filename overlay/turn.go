package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/turn/v4"
)

// TURNConfig is a TURN server (RFC 8656) to relay through, with its
// long-term credentials.
type TURNConfig struct {
	Server   netip.AddrPort
	Username string
	Password string
	Realm    string
}

// turnClient holds one UDP allocation on a TURN server (pion/turn), on a
// socket of its own: the allocation is a path of its own too, and its
// control traffic stays off WireGuard's socket. Peers send to the
// allocation's relayed address; this node sends to theirs, server to
// server, so both sides talk only to the TURN server whatever their NAT.
type turnClient struct {
	p    *Paths
	cfg  TURNConfig
	conn *net.UDPConn

	mu     sync.Mutex
	client *turn.Client
	relay  net.PacketConn
	addr   netip.AddrPort
	ok     atomic.Bool
	err    error
}

// turnRetryMax caps the backoff between allocation attempts.
const turnRetryMax = 30 * time.Second

// newTURNClient opens the client's socket, in the caller's network
// namespace; run allocates.
func newTURNClient(p *Paths, cfg TURNConfig) (*turnClient, error) {
	if !cfg.Server.IsValid() {
		return nil, errors.New("overlay: TURN server address is required")
	}
	network := "udp4"
	if cfg.Server.Addr().Is6() && !cfg.Server.Addr().Is4In6() {
		network = "udp6"
	}
	c, err := net.ListenUDP(network, nil)
	if err != nil {
		return nil, fmt.Errorf("overlay: TURN socket: %w", err)
	}
	cfg.Server = unmap(cfg.Server)
	return &turnClient{p: p, cfg: cfg, conn: c}, nil
}

// ready reports whether the allocation is up.
func (t *turnClient) ready() bool { return t != nil && t.ok.Load() }

// relayed is the allocation's relayed address; zero until allocated.
func (t *turnClient) relayed() netip.AddrPort {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.addr
}

// run allocates, reads what peers send through the allocation, and
// allocates again when it fails, until Paths closes.
func (t *turnClient) run() {
	t.p.wg.Go(t.readSocket)
	wait := time.Second
	for t.p.ctx.Err() == nil {
		relay, err := t.allocate()
		if err != nil {
			t.mu.Lock()
			t.err = err
			t.mu.Unlock()
			t.p.log.Warn("TURN allocation failed", "endpoint", t.cfg.Server, "err", err)
			select {
			case <-t.p.ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, turnRetryMax)
			continue
		}
		wait = time.Second
		t.readRelay(relay)
		t.ok.Store(false)
		relay.Close()
	}
}

// allocate makes a client and an allocation.
func (t *turnClient) allocate() (net.PacketConn, error) {
	client, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: t.cfg.Server.String(),
		TURNServerAddr: t.cfg.Server.String(),
		Username:       t.cfg.Username,
		Password:       t.cfg.Password,
		Realm:          t.cfg.Realm,
		Conn:           t.conn,
	})
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	if t.client != nil {
		t.client.Close()
	}
	t.client = client
	t.mu.Unlock()
	relay, err := client.Allocate()
	if err != nil {
		return nil, err
	}
	ua, _ := relay.LocalAddr().(*net.UDPAddr)
	if ua == nil {
		relay.Close()
		return nil, errors.New("overlay: TURN relayed address is not UDP")
	}
	ap := unmap(ua.AddrPort())
	t.mu.Lock()
	t.relay, t.addr, t.err = relay, ap, nil
	t.mu.Unlock()
	if err := t.p.ctx.Err(); err != nil { // closed meanwhile: close saw no allocation
		relay.Close()
		client.Close()
		return nil, err
	}
	t.ok.Store(true)
	t.p.log.Info("TURN allocated", "endpoint", t.cfg.Server, "addr", ap)
	t.p.poke()
	return relay, nil
}

// readSocket hands what the TURN server sends to the current client,
// until the socket is closed.
func (t *turnClient) readSocket() {
	buf := make([]byte, 65536)
	for {
		n, from, err := t.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		t.mu.Lock()
		c := t.client
		t.mu.Unlock()
		if c != nil {
			_, _ = c.HandleInbound(buf[:n], from) // a malformed message is dropped by pion
		}
	}
}

// readRelay hands what peers send through the allocation to Paths, until
// the allocation fails or closes.
func (t *turnClient) readRelay(relay net.PacketConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := relay.ReadFrom(buf)
		if err != nil {
			return
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok || n == 0 {
			continue
		}
		t.p.fromTURN(append([]byte(nil), buf[:n]...), unmap(ua.AddrPort()))
	}
}

// send sends bufs to a peer's relayed address through the allocation.
func (t *turnClient) send(bufs [][]byte, to netip.AddrPort) error {
	t.mu.Lock()
	relay := t.relay
	t.mu.Unlock()
	if relay == nil || !t.ok.Load() {
		return errors.New("overlay: no TURN allocation")
	}
	ua := net.UDPAddrFromAddrPort(to)
	for _, b := range bufs {
		if _, err := relay.WriteTo(b, ua); err != nil {
			return err
		}
	}
	return nil
}

// close ends the allocation and the socket.
func (t *turnClient) close() {
	t.mu.Lock()
	relay, client := t.relay, t.client
	t.mu.Unlock()
	if relay != nil {
		relay.Close()
	}
	if client != nil {
		client.Close()
	}
	t.conn.Close()
}
