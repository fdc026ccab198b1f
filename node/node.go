// Package node is the Agent6 node: one agent's presence on the overlay. It
// ties an identity to the data plane (package overlay) and offers stdlib
// sockets on the agent's key-derived address.
//
// A Node is used as a struct literal; the zero value is an embedded node
// (gVisor netstack, no root) with an ephemeral key:
//
//	n := &node.Node{Logger: logger}
//	if err := n.Up(ctx); err != nil { ... }
//	defer n.Close()
//	ln, _ := n.Listen("tcp", ":80")
//
// Setting TUN makes it a sidecar node: a kernel TUN device carries the
// overlay for every process on the host (needs CAP_NET_ADMIN).
package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/hashicorp/memberlist"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node/card"
	"github.com/agent6/agent6/node/dns"
	"github.com/agent6/agent6/node/membership"
	"github.com/agent6/agent6/overlay"
)

// DefaultMTU is the overlay MTU when Node.MTU is zero: WireGuard's usual
// 1420, which fits a 1500-byte underlay over IPv6.
const DefaultMTU = 1420

// KeyFileName is the agent key's file name inside Node.Dir.
const KeyFileName = "agent.key"

// Peer is a static WireGuard peer. Its overlay address is always derived
// from its key.
type Peer struct {
	PublicKey identity.WGPublicKey
	// Endpoint is the peer's UDP address; zero means wait for it to call.
	Endpoint netip.AddrPort
	// PersistentKeepalive, if non-zero, keeps NAT mappings open.
	PersistentKeepalive time.Duration
}

// Node is one agent on the overlay. Its exported fields configure it; they
// are read at the first call of Up and not after. The zero value is valid.
type Node struct {
	// Key is the agent key. If zero, the key is read from Dir/agent.key
	// (created there, mode 0600, if absent); if Dir is empty too, a new
	// ephemeral key is made.
	Key identity.PrivateKey
	// Dir is the node's state directory (the sidecar's state_dir). Only
	// the key file lives there, and only when Key is zero.
	Dir string
	// ListenPort is the WireGuard UDP port; 0 picks a free one.
	ListenPort uint16
	// TUN, if set, names a kernel TUN interface to create (sidecar mode).
	// Empty means embedded mode: a private gVisor netstack.
	TUN string
	// MTU of the overlay interface; 0 means DefaultMTU.
	MTU int
	// Peers are static peers, configured at Up.
	Peers []Peer
	// Logger receives the node's logs. Nil discards them.
	Logger *slog.Logger

	// Credential is this agent's X.509 certificate (DER) from its
	// organisation's CA, and Bundle the trust domains it accepts. With both
	// set the node runs membership: gossip inside the overlay, admitting
	// every agent whose credential verifies. Without them it has only its
	// static Peers.
	Credential []byte
	Bundle     *identity.Bundle
	// Card is this agent's card (what it can do), published in its signed
	// record for discovery. Nil publishes none.
	Card *card.Card
	// Join lists join tokens (agent6://KEY@host:port); Up starts joining
	// through any reachable one, retrying with backoff (see Joined).
	Join []string
	// Endpoints are the UDP addresses advertised to other nodes. A zero
	// port means the WireGuard port. Empty means this host's non-loopback
	// interface addresses.
	Endpoints []netip.AddrPort
	// GossipPort is the memberlist port on the overlay address; 0 means 7946.
	GossipPort uint16
	// MaxTasksPerPeer bounds the tasks of one peer this node accepts; 0
	// means 256 (see membership.Config).
	MaxTasksPerPeer int
	// TuneGossip, if set, adjusts memberlist's timing (tests, benchmarks).
	TuneGossip func(*memberlist.Config)
	// ReconnectInterval is how often a peer declared dead is asked whether
	// it is back (default 10 s; see membership.Config).
	ReconnectInterval time.Duration
	// DisableDNS turns off the DNS server that a node with membership
	// runs on port 53 of its overlay address (UDP and TCP), answering
	// <name>.<trust-domain>.agent6. with the agent's address (package
	// node/dns).
	DisableDNS bool
	// Via, if set, says which of this node's flows must cross waypoints
	// and which must have crossed them to arrive (overlay.Via): the node
	// sends the former through them (SRv6) and refuses what arrives
	// without the latter. Policy (@via) is to provide it; until then it is
	// for programs that embed a node, and for tests.
	Via overlay.Via
	// Waypoint, if set, makes this node a waypoint for others' flows.
	Waypoint *Waypoint

	mu      sync.Mutex // guards the fields below
	started bool
	closed  bool
	log     *slog.Logger
	key     identity.PrivateKey
	addr    netip.Addr
	dev     *overlay.Device
	bind    *overlay.Bind
	tnet    *overlay.Netstack // embedded mode only
	members *membership.Membership
	dns     *dns.Server // nil unless membership runs and DNS is enabled
	tokens  []membership.Token
	joined  chan struct{} // closed when a join succeeded (or none was asked)
	closers map[io.Closer]struct{}
	wg      sync.WaitGroup     // background goroutines: the join loop, task deliveries
	ctx     context.Context    // the join loop's and task deliveries'; canceled by Close
	stop    context.CancelFunc // cancels ctx
	tasks   map[netip.Addr]*Task
}

// Up starts the node and returns when it can carry traffic: the key is
// loaded, the TUN backend and the WireGuard device are up, and the static
// peers are configured. Calling Up on a running node does nothing.
func (n *Node) Up(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return fmt.Errorf("node: up: %w", net.ErrClosed)
	}
	if n.started {
		return nil
	}
	if err := n.up(ctx); err != nil {
		if n.dev != nil {
			n.dev.Close()
			n.dev = nil
		}
		return err
	}
	n.started = true
	if n.members != nil {
		if !n.DisableDNS {
			n.startDNS()
		}
		ctx := n.ctx // canceled by Close, like the task deliveries
		n.wg.Go(func() { n.joinLoop(ctx) })
	} else {
		close(n.joined)
	}
	return nil
}

func (n *Node) up(ctx context.Context) error {
	n.joined = make(chan struct{})
	n.ctx, n.stop = context.WithCancel(context.Background())
	n.log = n.Logger
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	key, err := n.loadKey()
	if err != nil {
		return err
	}
	n.key = key
	wgKey := key.WireGuard()
	n.addr = wgKey.Public().Addr()
	mtu := n.MTU
	if mtu == 0 {
		mtu = DefaultMTU
	}
	if mtu < 1280 || mtu > 65535 {
		return fmt.Errorf("node: MTU %d out of range (IPv6 needs at least 1280)", mtu)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if (n.Credential == nil) != (n.Bundle == nil) {
		return errors.New("node: Credential and Bundle go together: set both for membership, or neither")
	}
	if n.Credential == nil && len(n.Join) > 0 {
		return errors.New("node: Join needs a Credential and a Bundle")
	}
	for _, s := range n.Join {
		t, err := membership.ParseToken(s)
		if err != nil {
			return fmt.Errorf("node: join: %w", err)
		}
		n.tokens = append(n.tokens, t)
	}
	// Whatever can fail is checked before the host changes (a TUN device,
	// its address and route in sidecar mode): a second node started by
	// mistake must fail without touching the first.
	if err := portFree(n.ListenPort); err != nil {
		return err
	}
	var backend tun.Device
	if n.TUN != "" {
		backend, err = overlay.CreateKernelTUN(n.TUN, mtu, n.addr)
	} else {
		backend, n.tnet, err = overlay.NewNetstack(n.addr, mtu)
	}
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	n.bind = overlay.NewBind()
	n.dev, err = overlay.NewDevice(backend, overlay.Config{
		PrivateKey: wgKey,
		ListenPort: n.ListenPort,
		Bind:       n.bind,
		Logger:     n.log,
		Filter:     overlay.FilterConfig{OnHold: n.onHold, Via: n.Via, Transit: n.transit(key)},
	})
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	for _, p := range n.Peers {
		if err := n.setPeer(p); err != nil {
			return err
		}
	}
	port, _ := n.dev.ListenPort()
	if n.Credential != nil {
		if err := n.startMembership(port, mtu); err != nil {
			return err
		}
	}
	n.log.Info("node up", "addr", n.addr, "peer", wgKey.Public().String(), "port", port, "mode", n.mode())
	return ctx.Err()
}

// portFree reports an error if the UDP port (0: any) is taken, for IPv4
// or IPv6, as WireGuard listens on both.
func portFree(port uint16) error {
	if port == 0 {
		return nil
	}
	for _, network := range []string{"udp4", "udp6"} {
		c, err := net.ListenUDP(network, &net.UDPAddr{Port: int(port)})
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("node: UDP port %d is in use (another agent6? choose another ListenPort)", port)
		}
		if err == nil { // other errors: no IPv4 or IPv6 here, which WireGuard does without
			c.Close()
		}
	}
	return nil
}

func (n *Node) mode() string {
	if n.TUN != "" {
		return "tun"
	}
	return "embedded"
}

func (n *Node) loadKey() (identity.PrivateKey, error) {
	if !n.Key.IsZero() {
		return n.Key, nil
	}
	if n.Dir == "" {
		return identity.GeneratePrivateKey()
	}
	path := filepath.Join(n.Dir, KeyFileName)
	k, err := identity.LoadPrivateKey(path)
	if err == nil {
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return identity.PrivateKey{}, fmt.Errorf("node: %w", err)
	}
	if err := os.MkdirAll(n.Dir, 0o700); err != nil {
		return identity.PrivateKey{}, fmt.Errorf("node: state dir: %w", err)
	}
	if k, err = identity.GeneratePrivateKey(); err != nil {
		return identity.PrivateKey{}, err
	}
	if err := identity.WritePrivateKey(path, k, false); err != nil {
		return identity.PrivateKey{}, fmt.Errorf("node: %w", err)
	}
	n.log.Info("new agent key", "path", path)
	return k, nil
}

// running returns the device, or ErrNotUp / net.ErrClosed.
func (n *Node) running() (*overlay.Device, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.closed:
		return nil, net.ErrClosed
	case !n.started:
		return nil, ErrNotUp
	}
	return n.dev, nil
}

// Addr returns the node's Agent6 address, derived from its key; the zero
// Addr before Up.
func (n *Node) Addr() netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.addr
}

// PublicKey returns the node's WireGuard public key; zero before Up.
func (n *Node) PublicKey() identity.WGPublicKey {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.started {
		return identity.WGPublicKey{}
	}
	return n.key.WireGuard().Public()
}

// AgentKey returns the node's Ed25519 public key; zero before Up.
func (n *Node) AgentKey() identity.PublicKey {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.started {
		return identity.PublicKey{}
	}
	return n.key.Public()
}

// UDPPort returns the UDP port WireGuard listens on (useful when ListenPort
// is 0).
func (n *Node) UDPPort() (uint16, error) {
	dev, err := n.running()
	if err != nil {
		return 0, fmt.Errorf("node: listen port: %w", err)
	}
	return dev.ListenPort()
}

// AddPeer adds or updates a static peer. Its AllowedIPs are exactly the
// address derived from its key.
func (n *Node) AddPeer(p Peer) error {
	if _, err := n.running(); err != nil {
		return fmt.Errorf("node: add peer: %w", err)
	}
	return n.setPeer(p)
}

func (n *Node) setPeer(p Peer) error {
	if p.PublicKey.IsZero() {
		return errors.New("node: peer has no public key")
	}
	if p.Endpoint.IsValid() && (p.Endpoint.Port() == 0 || p.Endpoint.Addr().IsUnspecified()) {
		return fmt.Errorf("node: peer %s: endpoint %s is not a usable address", p.PublicKey.ShortString(), p.Endpoint)
	}
	return n.dev.SetPeer(overlay.PeerConfig{
		PublicKey:           p.PublicKey,
		Endpoint:            p.Endpoint,
		PersistentKeepalive: p.PersistentKeepalive,
	})
}

// RemovePeer removes a peer; removing an absent one is not an error.
func (n *Node) RemovePeer(pub identity.WGPublicKey) error {
	dev, err := n.running()
	if err != nil {
		return fmt.Errorf("node: remove peer: %w", err)
	}
	return dev.RemovePeer(pub)
}

// Dial connects to address ("[overlay-addr]:port") on the named network
// ("tcp", "tcp6", "udp", "udp6") from this node's address. An address
// that no agent this node knows holds fails at once with an error
// wrapping ErrUnknownAddr.
func (n *Node) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	dev, err := n.running()
	if err != nil {
		return nil, fmt.Errorf("node: dial: %w", err)
	}
	ap, err := n.dialTarget(dev, network, address)
	if err != nil {
		return nil, err
	}
	return n.dial(ctx, network, ap)
}

// dialTarget parses a dial's network and address and checks that some
// agent holds the address, so that a dial to nobody fails fast.
func (n *Node) dialTarget(dev *overlay.Device, network, address string) (netip.AddrPort, error) {
	ap, err := parseOverlayAddrPort(address)
	if err != nil {
		return ap, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	switch network {
	case "tcp", "tcp6", "udp", "udp6":
	default:
		return ap, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	if err := n.held(dev, ap.Addr()); err != nil {
		return ap, &net.OpError{Op: "dial", Net: network, Addr: addrOf(network, ap), Err: err}
	}
	return ap, nil
}

func addrOf(network string, ap netip.AddrPort) net.Addr {
	if network == "udp" || network == "udp6" {
		return net.UDPAddrFromAddrPort(ap)
	}
	return net.TCPAddrFromAddrPort(ap)
}

// held reports, as an error wrapping ErrUnknownAddr, that no agent this
// node knows holds addr: not this node or its tasks, nothing in
// membership's identity table (an agent being admitted counts: its
// packets wait for it; one that left, was revoked or expired does not),
// not a static peer.
func (n *Node) held(dev *overlay.Device, addr netip.Addr) error {
	if addr == n.addr {
		return nil
	}
	if _, ok := n.Task(addr); ok {
		return nil
	}
	why := "no peer has it"
	if m := n.Membership(); m != nil {
		why = "membership has not heard of it yet"
		if h, ok := m.Resolve(addr); ok {
			switch s := h.Member.State; s { // for a peer's task, its owner's
			case membership.StateLeft.String(), membership.StateRevoked.String(), membership.StateExpired.String():
				why = "the agent that held it is " + s
			default:
				return nil
			}
		}
	}
	peers, err := dev.Peers() // static peers
	if err != nil {
		return err
	}
	for _, p := range peers {
		if p.Addr == addr {
			return nil
		}
	}
	return fmt.Errorf("%w (%s)", ErrUnknownAddr, why)
}

// dial, listen and listenPacket work once the backend is up, before Up
// returns; n.addr and n.tnet do not change after that.
func (n *Node) dial(ctx context.Context, network string, ap netip.AddrPort) (net.Conn, error) {
	local := n.addr
	switch network {
	case "tcp", "tcp6":
		if n.tnet != nil {
			// Bind the agent's address: left to itself the stack would pick
			// the local address with the longest prefix in common with the
			// destination, which may be one of the agent's tasks.
			return n.tnet.DialTCPFrom(ctx, netip.AddrPortFrom(local, 0), ap)
		}
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0))}
		return d.DialContext(ctx, "tcp6", ap.String())
	case "udp", "udp6":
		if n.tnet != nil {
			c, err := n.tnet.DialUDP(netip.AddrPortFrom(local, 0), ap)
			if err != nil {
				return nil, err
			}
			return c, nil
		}
		d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0))}
		return d.DialContext(ctx, "udp6", ap.String())
	}
	return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
}

func (n *Node) listen(network string, ap netip.AddrPort) (net.Listener, error) {
	if network != "tcp" && network != "tcp6" {
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	if n.tnet != nil {
		return n.tnet.ListenTCP(ap)
	}
	return net.ListenTCP("tcp6", net.TCPAddrFromAddrPort(ap))
}

func (n *Node) listenPacket(network string, ap netip.AddrPort) (net.PacketConn, error) {
	if network != "udp" && network != "udp6" {
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	if n.tnet != nil {
		return n.tnet.ListenUDP(ap)
	}
	return net.ListenUDP("udp6", net.UDPAddrFromAddrPort(ap))
}

// Listen listens for TCP connections ("tcp", "tcp6") on address, which is
// ":port", "[this-node's-address]:port" or the address of one of its
// running tasks (Task.Listen). Close closes the listener too.
func (n *Node) Listen(network, address string) (net.Listener, error) {
	ap, err := n.localAddrPort(address)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	ln, err := n.listen(network, ap)
	if err != nil {
		return nil, err
	}
	l := &listener{Listener: ln, n: n}
	if !n.track(l) {
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.ErrClosed}
	}
	return l, nil
}

// ListenPacket listens for UDP datagrams ("udp", "udp6") on address, which
// is ":port", "[this-node's-address]:port" or a task's (Task.ListenPacket).
// Close closes it too.
func (n *Node) ListenPacket(network, address string) (net.PacketConn, error) {
	ap, err := n.localAddrPort(address)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	pc, err := n.listenPacket(network, ap)
	if err != nil {
		return nil, err
	}
	c := &packetConn{PacketConn: pc, n: n}
	if !n.track(c) {
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.ErrClosed}
	}
	return c, nil
}

// track registers c to be closed by Node.Close; it reports false, having
// closed c, if the node closed meanwhile.
func (n *Node) track(c io.Closer) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		c.Close()
		return false
	}
	if n.closers == nil {
		n.closers = make(map[io.Closer]struct{})
	}
	n.closers[c] = struct{}{}
	return true
}

func (n *Node) untrack(c io.Closer) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.closers, c)
}

// listener is a net.Listener that Node.Close closes.
type listener struct {
	net.Listener
	n *Node
}

func (l *listener) Close() error {
	l.n.untrack(l)
	return l.Listener.Close()
}

// packetConn is a net.PacketConn that Node.Close closes.
type packetConn struct {
	net.PacketConn
	n *Node
}

func (c *packetConn) Close() error {
	c.n.untrack(c)
	return c.PacketConn.Close()
}

func (n *Node) localAddrPort(address string) (netip.AddrPort, error) {
	if _, err := n.running(); err != nil {
		return netip.AddrPort{}, err
	}
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return netip.AddrPort{}, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port %q", portStr)
	}
	local := n.Addr()
	if host != "" {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("%w: %q", ErrNotLocal, host)
		}
		a = a.Unmap()
		if _, task := n.Task(a); a != local && !task {
			return netip.AddrPort{}, fmt.Errorf("%w: %s (this node is %s)", ErrNotLocal, a, local)
		}
		local = a
	}
	return netip.AddrPortFrom(local, uint16(port)), nil
}

func parseOverlayAddrPort(address string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("node: %q is not [address]:port (names resolve in a later release): %w", address, err)
	}
	if !identity.IsOverlay(ap.Addr()) {
		return netip.AddrPort{}, fmt.Errorf("%w: %s", ErrNotOverlay, ap.Addr())
	}
	return ap, nil
}

// Close stops the node: it closes the listeners it handed out, then the
// WireGuard device and the TUN backend. A second call returns an error
// wrapping net.ErrClosed.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return fmt.Errorf("node: close: %w", net.ErrClosed)
	}
	n.closed = true
	dev, closers, members, stop, dnsSrv := n.dev, n.closers, n.members, n.stop, n.dns
	n.closers = nil
	n.mu.Unlock()

	if stop != nil {
		stop()
	}
	n.wg.Wait()
	if dnsSrv != nil {
		dnsSrv.Close()
	}
	if members != nil {
		members.Leave(time.Second)
		members.Close()
	}
	for c := range closers {
		c.Close()
	}
	if dev != nil {
		dev.Close()
	}
	if n.log != nil && dev != nil {
		n.log.Info("node closed", "addr", n.Addr())
	}
	return nil
}
