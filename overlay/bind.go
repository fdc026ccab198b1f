package overlay

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/agent6/agent6/identity"
)

// ControlMagic is the first byte of an Agent6 control frame on the node's
// UDP socket. WireGuard messages start with their type (1-4) and STUN
// messages with two zero bits, so the first byte tells them apart.
const ControlMagic = 0xa6

// ControlHandler receives a control frame that arrived from a UDP address.
// It is called on the receive path and must not block; frame is only valid
// during the call.
type ControlHandler func(from netip.AddrPort, frame []byte)

// Bind is the node's one UDP socket: a conn.Bind that carries WireGuard
// and, told apart by their first byte, Agent6 control frames, which it
// hands to a ControlHandler instead of WireGuard, STUN, which it answers
// (stun.go), and path frames: probes between peers (paths.go) and the
// member-relay protocol (relay.go). With Paths, a peer's WireGuard
// endpoint is the peer itself and each datagram takes its best path. It
// also keeps first handshakes from stalling for WireGuard's retry (see
// handshake.go). Safe for concurrent use.
type Bind struct {
	conn.Bind
	handler atomic.Pointer[ControlHandler]
	hs      *handshakes
	stun    *stunState
	paths   atomic.Pointer[Paths] // set by NewPaths: managed peers' endpoints
	relay   atomic.Pointer[Relay] // set by NewRelay: this node relays for members
	// injected carries datagrams that arrived off the socket (over TURN)
	// to the receive function that hands them to WireGuard.
	injected chan injectedPacket
	// pathDrops counts path frames for a role this node does not have
	// (relay frames without a Relay, probes without Paths).
	pathDrops atomic.Uint64

	mu   sync.Mutex
	done chan struct{} // closed by Close: ends the receive functions of held and injected datagrams
}

var _ conn.Bind = (*Bind)(nil)

// NewBind wraps wireguard-go's default bind.
func NewBind() *Bind {
	b := &Bind{Bind: conn.NewDefaultBind(), stun: newSTUNState(), injected: make(chan injectedPacket, maxInjected)}
	b.hs = newHandshakes(func(pkt []byte, ep conn.Endpoint) error { return b.route([][]byte{pkt}, ep) })
	return b
}

// HandshakeStats reports what the Bind did for first handshakes.
func (b *Bind) HandshakeStats() HandshakeStats { return b.hs.stats() }

// SetControlHandler sets the receiver of control frames; nil drops them.
func (b *Bind) SetControlHandler(h ControlHandler) {
	if h == nil {
		b.handler.Store(nil)
		return
	}
	b.handler.Store(&h)
}

// Open implements conn.Bind, wrapping each receive function so that
// control frames never reach WireGuard and crossed initiations can be
// held, and adding one that delivers the initiations released or
// redelivered.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	if err != nil {
		return nil, 0, err
	}
	wrapped := make([]conn.ReceiveFunc, 0, len(fns)+2)
	for _, fn := range fns {
		wrapped = append(wrapped, b.demux(fn))
	}
	done := make(chan struct{})
	b.mu.Lock()
	b.done = done
	b.mu.Unlock()
	return append(wrapped, b.hs.receiveFunc(done), b.injectedFunc(done)), actual, nil
}

// Close implements conn.Bind.
func (b *Bind) Close() error {
	b.mu.Lock()
	if b.done != nil {
		close(b.done)
		b.done = nil
	}
	b.mu.Unlock()
	return b.Bind.Close()
}

// Send implements conn.Bind, noting this node's handshake messages and
// holding back an initiation that the peer's, about to be answered, may
// supersede (see handshake.go).
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	ep = b.resolve(ep)
	for i := 0; i < len(bufs); i++ {
		switch handshakeType(bufs[i]) {
		case wgInitiation:
			if pe, ok := ep.(*peerEndpoint); ok {
				pe.noteInit(bufs[i])
			}
			if !b.hs.initiated(bufs[i], ep, time.Now()) {
				bufs = append(bufs[:i:i], bufs[i+1:]...) // a copy: the caller's slice stays whole
				i--
			}
		case wgResponse:
			b.hs.responded(bufs[i], ep)
		}
	}
	if len(bufs) == 0 {
		return nil
	}
	return b.route(bufs, ep)
}

func (b *Bind) demux(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, err := fn(packets, sizes, eps)
		now := time.Now()
		for i := range n {
			if sizes[i] == 0 {
				continue
			}
			pkt := packets[i][:sizes[i]]
			switch {
			case pkt[0] == ControlMagic:
				if h := b.handler.Load(); h != nil {
					if ap, perr := netip.ParseAddrPort(eps[i].DstToString()); perr == nil {
						(*h)(ap, pkt)
					}
				}
				sizes[i] = 0 // wireguard-go skips packets shorter than a message
				continue
			case pkt[0] == PathMagic:
				// A relayed datagram comes back as the WireGuard message
				// it carries, moved to the front of the buffer.
				if sizes[i], eps[i] = b.pathFrame(packets[i], sizes[i], eps[i], now); sizes[i] == 0 {
					continue
				}
				pkt = packets[i][:sizes[i]]
			case pkt[0] < 0x40 && isSTUN(pkt):
				if ap, ok := endpointAddr(eps[i]); ok {
					b.stun.handle(pkt, ap, now, b.sendRawQuiet)
				}
				sizes[i] = 0
				continue
			default:
				eps[i] = b.received(eps[i], now)
			}
			if t := handshakeType(pkt); t != 0 && b.hs.received(pkt, eps[i], now) {
				sizes[i] = 0
			}
		}
		return n, err
	}
}

// SendControl sends one control frame to addr.
func (b *Bind) SendControl(addr netip.AddrPort, frame []byte) error {
	return b.sendRaw(addr, frame)
}

// sendRaw sends one datagram to addr on the socket, bypassing paths.
func (b *Bind) sendRaw(addr netip.AddrPort, pkt []byte) error {
	return b.Bind.Send([][]byte{pkt}, &conn.StdNetEndpoint{AddrPort: addr})
}

// sendRawQuiet is sendRaw for answers on the receive path, whose errors
// (a closed socket, a full buffer) nobody would act on.
func (b *Bind) sendRawQuiet(addr netip.AddrPort, pkt []byte) { _ = b.sendRaw(addr, pkt) }

// ParseEndpoint implements conn.Bind. Besides an address it takes the
// form Device.SetPeer writes for a peer whose paths the Bind manages
// (ManagedEndpoint), and returns that peer.
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	if hexKey, ok := strings.CutPrefix(s, managedPrefix); ok {
		p := b.paths.Load()
		if p == nil {
			return nil, errors.New("overlay: a managed peer needs Paths on the Bind")
		}
		raw, err := hex.DecodeString(hexKey)
		if err != nil || len(raw) != 32 {
			return nil, fmt.Errorf("overlay: bad managed endpoint %q", s)
		}
		return p.endpoint(identity.WGPublicKeyFromRaw([32]byte(raw))), nil
	}
	return b.Bind.ParseEndpoint(s)
}

// resolve returns the managed peer that ep's address belongs to, or ep.
// WireGuard roams a peer to the address of an authenticated datagram
// that came from an address not yet known to be the peer's; once Paths
// learns it, sends there take the peer's path again.
func (b *Bind) resolve(ep conn.Endpoint) conn.Endpoint {
	if _, ok := ep.(*peerEndpoint); ok {
		return ep
	}
	if p := b.paths.Load(); p != nil {
		if pe := p.byAddr(ep); pe != nil {
			return pe
		}
	}
	return ep
}

// received returns the endpoint to hand WireGuard with a datagram from
// ep: the managed peer its address belongs to, or ep.
func (b *Bind) received(ep conn.Endpoint, now time.Time) conn.Endpoint {
	if p := b.paths.Load(); p != nil {
		if pe := p.byAddr(ep); pe != nil {
			pe.lastRx.Store(now.UnixNano())
			return pe
		}
	}
	return ep
}

// route sends bufs to ep: along a managed peer's path, or to its address.
func (b *Bind) route(bufs [][]byte, ep conn.Endpoint) error {
	if pe, ok := ep.(*peerEndpoint); ok {
		return pe.p.send(pe, bufs)
	}
	return b.Bind.Send(bufs, ep)
}

// pathFrame handles a path frame in buf[:n] from ep. For a datagram
// relayed to this node it moves the datagram to the front of buf and
// returns its size and the peer that sent it; otherwise 0.
func (b *Bind) pathFrame(buf []byte, n int, ep conn.Endpoint, now time.Time) (int, conn.Endpoint) {
	from, ok := endpointAddr(ep)
	if !ok || n < pathHeader {
		return 0, ep
	}
	switch buf[2] {
	case frameBind, frameSend:
		if r := b.relay.Load(); r != nil {
			r.handle(buf[:n], from, now)
		} else {
			b.pathDrops.Add(1)
		}
		return 0, ep
	}
	p := b.paths.Load()
	if p == nil {
		b.pathDrops.Add(1)
		return 0, ep
	}
	pe, payload := p.handle(buf[:n], from, now)
	if pe == nil {
		return 0, ep
	}
	return copy(buf, payload), pe
}

// injectedPacket is a datagram for WireGuard that did not come off the
// socket.
type injectedPacket struct {
	pkt []byte
	ep  conn.Endpoint
}

// maxInjected bounds the queue of injected datagrams: beyond it they are
// dropped, as a full socket buffer would.
const maxInjected = 1024

// inject queues pkt (which the Bind now owns) from ep for WireGuard, and
// reports whether there was room.
func (b *Bind) inject(pkt []byte, ep conn.Endpoint) bool {
	select {
	case b.injected <- injectedPacket{pkt: pkt, ep: ep}:
		return true
	default:
		return false
	}
}

// injectedFunc is a conn.ReceiveFunc that hands WireGuard the injected
// datagrams, until done is closed.
func (b *Bind) injectedFunc(done <-chan struct{}) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		var i injectedPacket
		select {
		case i = <-b.injected:
		case <-done:
			return 0, net.ErrClosed
		}
		n := 0
		for {
			sizes[n] = copy(bufs[n], i.pkt)
			eps[n] = i.ep
			n++
			if n == len(bufs) {
				return n, nil
			}
			select {
			case i = <-b.injected:
			default:
				return n, nil
			}
		}
	}
}
