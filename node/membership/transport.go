package membership

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Network is the overlay as membership uses it: sockets on this node's
// Agent6 address. node.Node implements it, in both the kernel-TUN and the
// netstack mode, so one transport serves both. Its methods must be safe
// for concurrent use; Dial may block until ctx is done.
type Network interface {
	ListenPacket(network, address string) (net.PacketConn, error)
	Listen(network, address string) (net.Listener, error)
	Dial(ctx context.Context, network, address string) (net.Conn, error)
}

// transport is memberlist's Transport over the overlay: gossip is carried
// inside WireGuard, so every gossip packet is encrypted, and its source
// address is the authenticated identity of its sender.
type transport struct {
	addr netip.Addr
	port uint16
	pc   net.PacketConn
	ln   net.Listener
	net  Network

	packets chan *memberlist.Packet
	streams chan net.Conn
	ctx     context.Context // canceled by Shutdown
	cancel  context.CancelFunc
	done    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once

	mu    sync.Mutex // guards conns
	conns map[*stream]struct{}
}

// stream is a gossip TCP connection that Shutdown closes, so that no
// push/pull outlives the transport.
type stream struct {
	net.Conn
	t *transport
}

func (c *stream) Close() error {
	c.t.mu.Lock()
	delete(c.t.conns, c)
	c.t.mu.Unlock()
	return c.Conn.Close()
}

// track wraps c so that Shutdown closes it; a transport already shut down
// closes it at once.
func (t *transport) track(c net.Conn) (net.Conn, error) {
	s := &stream{Conn: c, t: t}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.conns == nil {
		c.Close()
		return nil, net.ErrClosed
	}
	t.conns[s] = struct{}{}
	return s, nil
}

var _ memberlist.Transport = (*transport)(nil)

func newTransport(n Network, addr netip.Addr, port uint16) (*transport, error) {
	hp := netip.AddrPortFrom(addr, port).String()
	pc, err := n.ListenPacket("udp", hp)
	if err != nil {
		return nil, fmt.Errorf("membership: gossip UDP %s: %w", hp, err)
	}
	ln, err := n.Listen("tcp", hp)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("membership: gossip TCP %s: %w", hp, err)
	}
	t := &transport{
		addr: addr, port: port, pc: pc, ln: ln, net: n,
		packets: make(chan *memberlist.Packet, 256),
		streams: make(chan net.Conn, 16),
		done:    make(chan struct{}),
		conns:   make(map[*stream]struct{}),
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.wg.Go(t.readLoop)
	t.wg.Go(t.acceptLoop)
	return t, nil
}

func (t *transport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return net.IP(t.addr.AsSlice()), int(t.port), nil
}

func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return time.Time{}, fmt.Errorf("membership: gossip address %q: %w", addr, err)
	}
	_, err = t.pc.WriteTo(b, net.UDPAddrFromAddrPort(ap))
	return time.Now(), err
}

func (t *transport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	stop := context.AfterFunc(t.ctx, cancel) // Shutdown aborts dials in flight
	defer stop()
	c, err := t.net.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return t.track(c)
}

func (t *transport) StreamCh() <-chan net.Conn { return t.streams }

func (t *transport) Shutdown() error {
	t.once.Do(func() {
		t.cancel()
		close(t.done)
		t.pc.Close()
		t.ln.Close()
		t.mu.Lock()
		conns := t.conns
		t.conns = nil
		t.mu.Unlock()
		for c := range conns {
			c.Conn.Close()
		}
		t.wg.Wait()
	})
	return nil
}

func (t *transport) readLoop() {
	buf := make([]byte, 65536)
	for {
		n, from, err := t.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || t.closed() {
				return
			}
			continue
		}
		p := &memberlist.Packet{Buf: append([]byte(nil), buf[:n]...), From: from, Timestamp: time.Now()}
		select {
		case t.packets <- p:
		case <-t.done:
			return
		}
	}
}

func (t *transport) acceptLoop() {
	for {
		c, err := t.ln.Accept()
		if err != nil {
			if t.closed() {
				return
			}
			select {
			case <-t.done:
				return
			case <-time.After(50 * time.Millisecond): // transient accept error
			}
			continue
		}
		tc, err := t.track(c)
		if err != nil {
			return
		}
		select {
		case t.streams <- tc:
		case <-t.done:
			tc.Close()
			return
		}
	}
}

func (t *transport) closed() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// gossipAddr is the memberlist address of the node at addr.
func gossipAddr(addr netip.Addr, port uint16) string {
	return net.JoinHostPort(addr.String(), strconv.Itoa(int(port)))
}
