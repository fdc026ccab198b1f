package overlay

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// Netstack is a userspace IPv6 TCP/IP stack (gVisor) holding one overlay
// address, and the sockets on it. It needs no privileges, and many can
// live in one process.
//
// It replaces wireguard-go's tun/netstack, whose Close closes the packet
// channel that gVisor's goroutines may still be sending on (a data race,
// and a "send on closed channel" panic when the timing is unlucky); here
// shutdown is signalled on a separate channel that senders select on.
type Netstack struct {
	stack *stack.Stack
	dev   *netstackTUN
}

// netstackTUN is the tun.Device side of a Netstack.
type netstackTUN struct {
	ep       *channel.Endpoint
	stack    *stack.Stack
	notify   *channel.NotificationHandle
	events   chan tun.Event
	incoming chan *buffer.View
	wake     chan struct{}
	mtu      int

	done      chan struct{}
	closeOnce sync.Once
}

var _ tun.Device = (*netstackTUN)(nil)

const nicID = 1

// NewNetstack creates a stack holding addr and the tun.Device through which
// its packets reach WireGuard.
func NewNetstack(addr netip.Addr, mtu int) (tun.Device, *Netstack, error) {
	if !addr.Is6() {
		return nil, nil, fmt.Errorf("overlay: netstack address %s is not IPv6", addr)
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol6},
		HandleLocal:        true,
	})
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		s.Close()
		return nil, nil, fmt.Errorf("overlay: netstack: enable SACK: %v", err)
	}
	dev := &netstackTUN{
		ep:       channel.New(1024, uint32(mtu), ""),
		stack:    s,
		events:   make(chan tun.Event, 1),
		incoming: make(chan *buffer.View, 256),
		wake:     make(chan struct{}, 1),
		mtu:      mtu,
		done:     make(chan struct{}),
	}
	dev.notify = dev.ep.AddNotify(dev)
	if err := s.CreateNIC(nicID, dev.ep); err != nil {
		dev.Close()
		return nil, nil, fmt.Errorf("overlay: netstack: create NIC: %v", err)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv6.ProtocolNumber, AddressWithPrefix: tcpip.AddrFromSlice(addr.AsSlice()).WithPrefix()}
	if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		dev.Close()
		return nil, nil, fmt.Errorf("overlay: netstack: add address %s: %v", addr, err)
	}
	s.AddRoute(tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	dev.events <- tun.EventUp
	return dev, &Netstack{stack: s, dev: dev}, nil
}

// WriteNotify is called by gVisor when the stack has a packet to send.
func (t *netstackTUN) WriteNotify() {
	pkt := t.ep.Read()
	if pkt == nil {
		return
	}
	view := pkt.ToView()
	pkt.DecRef()
	select {
	case t.incoming <- view:
	case <-t.done:
		view.Release()
	}
}

func (t *netstackTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case view := <-t.incoming:
		n, err := view.Read(bufs[0][offset:])
		view.Release()
		if err != nil {
			return 0, err
		}
		sizes[0] = n
		return 1, nil
	case <-t.wake:
		return 0, errWoken
	case <-t.done:
		return 0, os.ErrClosed
	}
}

// Wake interrupts a blocked Read (see Filter.Release).
func (t *netstackTUN) Wake() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

func (t *netstackTUN) Write(bufs [][]byte, offset int) (int, error) {
	select {
	case <-t.done:
		return 0, os.ErrClosed
	default:
	}
	for _, b := range bufs {
		pkt := b[offset:]
		if len(pkt) == 0 {
			continue
		}
		if pkt[0]>>4 != 6 {
			return 0, syscall.EAFNOSUPPORT
		}
		prohibitedToNoRoute(pkt)
		pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
		t.ep.InjectInbound(header.IPv6ProtocolNumber, pb)
		pb.DecRef()
	}
	return len(bufs), nil
}

// prohibitedToNoRoute rewrites an ICMPv6 "administratively prohibited"
// (Destination Unreachable, code 1) into "no route to destination" (code
// 0), fixing its checksum. gVisor ignores code 1 (its TCP acts only on
// codes 0 and 4, gvisor.dev/issues/5270), so a connection refused by
// policy, or that no waypoint can carry, would retry its SYN for a minute
// instead of failing at once, as it does on a kernel stack.
func prohibitedToNoRoute(pkt []byte) {
	if len(pkt) < ipv6HeaderLen+8 || pkt[6] != protoICMPv6 || pkt[40] != ICMPv6DestUnreachable || pkt[41] != ICMPv6CodeProhibited {
		return
	}
	pkt[41] = 0
	// RFC 1624: HC' = ~(~HC + ~m + m'), m the word holding type and code.
	old, new := uint32(pkt[40])<<8|ICMPv6CodeProhibited, uint32(pkt[40])<<8
	sum := uint32(^binary.BigEndian.Uint16(pkt[42:])) + (^old & 0xffff) + new
	sum = sum&0xffff + sum>>16
	sum = sum&0xffff + sum>>16
	binary.BigEndian.PutUint16(pkt[42:], ^uint16(sum))
}

func (t *netstackTUN) File() *os.File           { return nil }
func (t *netstackTUN) MTU() (int, error)        { return t.mtu, nil }
func (t *netstackTUN) Name() (string, error)    { return "netstack", nil }
func (t *netstackTUN) Events() <-chan tun.Event { return t.events }
func (t *netstackTUN) BatchSize() int           { return 1 }

// Close stops the stack: its sockets fail, and its goroutines end.
func (t *netstackTUN) Close() error {
	t.closeOnce.Do(func() {
		close(t.done)
		t.stack.RemoveNIC(nicID)
		t.stack.Close()
		t.ep.RemoveNotify(t.notify)
		t.ep.Close()
		t.stack.Wait()
		close(t.events) // only NewNetstack sends on it
	})
	return nil
}

func fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()}
}

// AddAddress adds a (task) address to the stack, so that sockets can use it.
func (n *Netstack) AddAddress(addr netip.Addr) error {
	pa := tcpip.ProtocolAddress{Protocol: ipv6.ProtocolNumber, AddressWithPrefix: tcpip.AddrFromSlice(addr.AsSlice()).WithPrefix()}
	if err := n.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		return fmt.Errorf("overlay: netstack: add address %s: %v", addr, err)
	}
	return nil
}

// RemoveAddress removes an address added with AddAddress.
func (n *Netstack) RemoveAddress(addr netip.Addr) error {
	if err := n.stack.RemoveAddress(nicID, tcpip.AddrFromSlice(addr.AsSlice())); err != nil {
		return fmt.Errorf("overlay: netstack: remove address %s: %v", addr, err)
	}
	return nil
}

// DialTCPFrom connects to addr from the local address from.
func (n *Netstack) DialTCPFrom(ctx context.Context, from, addr netip.AddrPort) (net.Conn, error) {
	c, err := gonet.DialTCPWithBind(ctx, n.stack, fullAddr(from), fullAddr(addr), ipv6.ProtocolNumber)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// DialTCP connects to addr.
func (n *Netstack) DialTCP(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	c, err := gonet.DialContextTCP(ctx, n.stack, fullAddr(addr), ipv6.ProtocolNumber)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// ListenTCP listens on addr.
func (n *Netstack) ListenTCP(addr netip.AddrPort) (net.Listener, error) {
	l, err := gonet.ListenTCP(n.stack, fullAddr(addr), ipv6.ProtocolNumber)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// DialUDP returns a UDP socket on laddr connected to raddr.
func (n *Netstack) DialUDP(laddr, raddr netip.AddrPort) (net.Conn, error) {
	l, r := fullAddr(laddr), fullAddr(raddr)
	c, err := gonet.DialUDP(n.stack, &l, &r, ipv6.ProtocolNumber)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// ListenUDP returns an unconnected UDP socket on laddr.
func (n *Netstack) ListenUDP(laddr netip.AddrPort) (net.PacketConn, error) {
	l := fullAddr(laddr)
	c, err := gonet.DialUDP(n.stack, &l, nil, ipv6.ProtocolNumber)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// NetstackStats are the stack's counters of traffic it could not deliver
// or had to send again: in embedded mode the stack is the node's kernel,
// and these are what /proc/net/snmp would say of an overloaded socket.
type NetstackStats struct {
	// UDPReceiveBufferDrops are datagrams dropped because the receiving
	// socket's buffer was full: its reader fell behind (gossip in a join
	// storm, for one).
	UDPReceiveBufferDrops uint64
	// UDPUnknownPort are datagrams to a port no socket listens on.
	UDPUnknownPort uint64
	// TCPRetransmits are TCP segments sent again.
	TCPRetransmits uint64
}

// Stats reads the stack's counters.
func (n *Netstack) Stats() NetstackStats {
	st := n.stack.Stats()
	return NetstackStats{
		UDPReceiveBufferDrops: st.UDP.ReceiveBufferErrors.Value(),
		UDPUnknownPort:        st.UDP.UnknownPortErrors.Value(),
		TCPRetransmits:        st.TCP.Retransmits.Value(),
	}
}
