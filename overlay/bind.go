package overlay

import (
	"net/netip"
	"sync/atomic"

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
// hands to a ControlHandler instead of WireGuard. Safe for concurrent use.
type Bind struct {
	conn.Bind
	handler atomic.Pointer[ControlHandler]
}

var _ conn.Bind = (*Bind)(nil)

// NewBind wraps wireguard-go's default bind.
func NewBind() *Bind { return &Bind{Bind: conn.NewDefaultBind()} }

// SetControlHandler sets the receiver of control frames; nil drops them.
func (b *Bind) SetControlHandler(h ControlHandler) {
	if h == nil {
		b.handler.Store(nil)
		return
	}
	b.handler.Store(&h)
}

// Open implements conn.Bind, wrapping each receive function so that
// control frames never reach WireGuard.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	if err != nil {
		return nil, 0, err
	}
	wrapped := make([]conn.ReceiveFunc, len(fns))
	for i, fn := range fns {
		wrapped[i] = b.demux(fn)
	}
	return wrapped, actual, nil
}

func (b *Bind) demux(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, err := fn(packets, sizes, eps)
		for i := range n {
			if sizes[i] == 0 || packets[i][0] != ControlMagic {
				continue
			}
			if h := b.handler.Load(); h != nil {
				if ap, perr := netip.ParseAddrPort(eps[i].DstToString()); perr == nil {
					(*h)(ap, packets[i][:sizes[i]])
				}
			}
			sizes[i] = 0 // wireguard-go skips packets shorter than a message
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
