package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Do runs fn on a goroutine locked to an OS thread that has entered the
// namespace, so that the sockets, TUN devices and netlink handles fn opens
// belong to it; they stay there when fn returns, and goroutines fn starts
// run on other threads, in the caller's namespace. If the thread cannot
// return to its namespace it is never reused: its goroutine exits locked.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: %s: %w", ns.Name, err)
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + ns.Name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: %s: %w", ns.Name, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: enter %s: %w", ns.Name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("netns: leave %s: %w", ns.Name, err)) // the thread dies locked
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// NAT behaviours of a home router.
type NATMode int

const (
	// EndpointIndependent is iptables MASQUERADE: a source keeps its
	// port (and so its mapping) whatever the destination, so peers that
	// learn it from a STUN server can punch through.
	EndpointIndependent NATMode = iota
	// EndpointDependent is MASQUERADE --random-fully: every destination
	// gets a new random port, so the mapping a STUN server saw is useless
	// to anyone else ("symmetric" NAT).
	EndpointDependent
)

func (m NATMode) String() string {
	if m == EndpointDependent {
		return "endpoint-dependent"
	}
	return "endpoint-independent"
}

// Internet is a NAT test topology: a Core namespace standing for the
// internet, a bridge (br0) on PublicSubnet holding 203.0.113.1 itself (for
// servers such as coturn), public hosts on the bridge, and homes: a
// router namespace with a WAN address on the bridge and a LAN
// (HomeSubnet, the same in every home, as real homes have it) with one
// host behind NAT.
type Internet struct {
	Core *NS

	prefix string
	closed atomic.Bool

	mu    sync.Mutex
	hosts int
	nss   []*NS
}

// The subnets of an Internet. They exist only inside its namespaces.
var (
	PublicSubnet = netip.MustParsePrefix("203.0.113.0/24")
	HomeSubnet   = netip.MustParsePrefix("192.168.1.0/24")
)

// Home is a router with one host behind it.
type Home struct {
	Router, Host *NS
	// WAN is the router's public address: what its host's traffic is
	// masqueraded to.
	WAN  netip.Addr
	Mode NATMode
}

// NewInternet creates the core namespace and its bridge. It needs the ip
// command; homes need iptables too.
func NewInternet(ctx context.Context, prefix string) (_ *Internet, err error) {
	in := &Internet{prefix: prefix}
	defer func() {
		if err != nil {
			err = errors.Join(err, in.Close())
		}
	}()
	if in.Core, err = newNS(ctx, prefix, "inet"); err != nil {
		return nil, err
	}
	core := in.Core.Name
	for _, args := range [][]string{
		{"-n", core, "link", "add", "br0", "type", "bridge"},
		{"-n", core, "addr", "add", netip.PrefixFrom(publicAddr(1), 24).String(), "dev", "br0"},
		{"-n", core, "link", "set", "br0", "up"},
	} {
		if _, err := ip(ctx, args...); err != nil {
			return nil, err
		}
	}
	in.Core.Link, in.Core.Addr = "br0", publicAddr(1)
	return in, nil
}

func publicAddr(i int) netip.Addr {
	a := PublicSubnet.Addr().As4()
	a[3] = byte(i)
	return netip.AddrFrom4(a)
}

// plug adds a veth pair from the bridge to ns, named name inside ns, with
// address addr/24 on PublicSubnet.
func (in *Internet) plug(ctx context.Context, ns *NS, name string, addr netip.Addr) error {
	in.mu.Lock()
	in.hosts++
	port := fmt.Sprintf("p%d", in.hosts)
	in.mu.Unlock()
	core := in.Core.Name
	for _, args := range [][]string{
		{"-n", core, "link", "add", port, "type", "veth", "peer", "name", name, "netns", ns.Name},
		{"-n", core, "link", "set", port, "master", "br0", "up"},
		{"-n", ns.Name, "addr", "add", netip.PrefixFrom(addr, 24).String(), "dev", name},
		{"-n", ns.Name, "link", "set", name, "up"},
	} {
		if _, err := ip(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

func (in *Internet) newNS(ctx context.Context, role string) (*NS, error) {
	ns, err := newNS(ctx, in.prefix, role)
	if err != nil {
		return nil, err
	}
	in.mu.Lock()
	in.nss = append(in.nss, ns)
	in.mu.Unlock()
	return ns, nil
}

func (in *Internet) nextPublic(base int) netip.Addr {
	in.mu.Lock()
	defer in.mu.Unlock()
	return publicAddr(base + in.hosts)
}

// AddPublic adds a host with a public address (203.0.113.10 and up) on
// eth0.
func (in *Internet) AddPublic(ctx context.Context, role string) (*NS, error) {
	ns, err := in.newNS(ctx, role)
	if err != nil {
		return nil, err
	}
	addr := in.nextPublic(10)
	if err := in.plug(ctx, ns, underlayLink, addr); err != nil {
		return nil, err
	}
	ns.Link, ns.Addr = underlayLink, addr
	return ns, nil
}

// AddHome adds a router (WAN address 203.0.113.100 and up) that
// masquerades its LAN as mode says and, as home routers do, drops what
// comes new from the WAN, and one host behind it at 192.168.1.2, routed
// through 192.168.1.1.
func (in *Internet) AddHome(ctx context.Context, role string, mode NATMode) (*Home, error) {
	r, err := in.newNS(ctx, role+"-gw")
	if err != nil {
		return nil, err
	}
	h, err := in.newNS(ctx, role)
	if err != nil {
		return nil, err
	}
	wan := in.nextPublic(100)
	if err := in.plug(ctx, r, "wan", wan); err != nil {
		return nil, err
	}
	gw, host := HomeSubnet.Addr().Next(), HomeSubnet.Addr().Next().Next()
	for _, args := range [][]string{
		{"-n", r.Name, "link", "add", "lan", "type", "veth", "peer", "name", underlayLink, "netns", h.Name},
		{"-n", r.Name, "addr", "add", netip.PrefixFrom(gw, 24).String(), "dev", "lan"},
		{"-n", r.Name, "link", "set", "lan", "up"},
		{"-n", h.Name, "addr", "add", netip.PrefixFrom(host, 24).String(), "dev", underlayLink},
		{"-n", h.Name, "link", "set", underlayLink, "up"},
		{"-n", h.Name, "route", "add", "default", "via", gw.String()},
	} {
		if _, err := ip(ctx, args...); err != nil {
			return nil, err
		}
	}
	if err := r.Sysctl(ctx, "net.ipv4.ip_forward", "1"); err != nil {
		return nil, err
	}
	masq := []string{"-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"}
	if mode == EndpointDependent {
		masq = append(masq, "--random-fully")
	}
	// A home router's firewall: nothing new from the WAN reaches the
	// router or the LAN. Without it, a peer's punching datagram that
	// arrives before the host's own leaves would be taken as a flow to
	// the router itself, and its conntrack entry would push the host's
	// mapping to another port (a packet dropped here never gets one).
	for _, rule := range [][]string{
		{"-A", "INPUT", "-i", "wan", "-m", "conntrack", "--ctstate", "NEW,INVALID", "-j", "DROP"},
		{"-A", "FORWARD", "-i", "wan", "-m", "conntrack", "--ctstate", "NEW,INVALID", "-j", "DROP"},
		masq,
	} {
		if _, err := r.Run(ctx, "iptables", rule...); err != nil {
			return nil, err
		}
	}
	r.Link, r.Addr = "wan", wan
	h.Link, h.Addr = underlayLink, host
	return &Home{Router: r, Host: h, WAN: wan, Mode: mode}, nil
}

// FlushConntrack forgets the router's connection tracking, and with it
// every NAT mapping: the next datagram out gets a new one (a new port
// under EndpointDependent), and datagrams to the old one are dropped.
func (h *Home) FlushConntrack(ctx context.Context) error {
	_, err := h.Router.Run(ctx, "conntrack", "-F")
	return err
}

// Close closes every namespace of the topology. A second Close returns an
// error wrapping net.ErrClosed.
func (in *Internet) Close() error {
	if in.closed.Swap(true) {
		return fmt.Errorf("netns: internet: %w", net.ErrClosed)
	}
	in.mu.Lock()
	nss := append([]*NS{}, in.nss...)
	in.mu.Unlock()
	return closeAll(append(nss, in.Core)...)
}
