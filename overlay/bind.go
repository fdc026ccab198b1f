package overlay

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
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
// hands to a ControlHandler instead of WireGuard. It also keeps first
// handshakes from stalling for WireGuard's retry (see handshake.go). Safe
// for concurrent use.
type Bind struct {
	conn.Bind
	handler atomic.Pointer[ControlHandler]
	hs      *handshakes

	mu   sync.Mutex
	done chan struct{} // closed by Close: ends the receive function of held initiations
}

var _ conn.Bind = (*Bind)(nil)

// NewBind wraps wireguard-go's default bind.
func NewBind() *Bind {
	b := &Bind{Bind: conn.NewDefaultBind()}
	b.hs = newHandshakes(func(pkt []byte, ep conn.Endpoint) error { return b.Bind.Send([][]byte{pkt}, ep) })
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
	wrapped := make([]conn.ReceiveFunc, 0, len(fns)+1)
	for _, fn := range fns {
		wrapped = append(wrapped, b.demux(fn))
	}
	done := make(chan struct{})
	b.mu.Lock()
	b.done = done
	b.mu.Unlock()
	return append(wrapped, b.hs.receiveFunc(done)), actual, nil
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
	for i := 0; i < len(bufs); i++ {
		switch handshakeType(bufs[i]) {
		case wgInitiation:
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
	return b.Bind.Send(bufs, ep)
}

func (b *Bind) demux(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, err := fn(packets, sizes, eps)
		for i := range n {
			if sizes[i] == 0 {
				continue
			}
			switch pkt := packets[i][:sizes[i]]; pkt[0] {
			case ControlMagic:
				if h := b.handler.Load(); h != nil {
					if ap, perr := netip.ParseAddrPort(eps[i].DstToString()); perr == nil {
						(*h)(ap, pkt)
					}
				}
				sizes[i] = 0 // wireguard-go skips packets shorter than a message
			case wgInitiation, wgResponse:
				if b.hs.received(pkt, eps[i], time.Now()) {
					sizes[i] = 0
				}
			}
		}
		return n, err
	}
}

// SendControl sends one control frame to addr.
func (b *Bind) SendControl(addr netip.AddrPort, frame []byte) error {
	ep, err := b.Bind.ParseEndpoint(addr.String())
	if err != nil {
		return err
	}
	return b.Bind.Send([][]byte{frame}, ep)
}
