package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
)

// Subnet is the IPv4 underlay subnet of every topology. It exists only
// inside the namespaces of one topology, so topologies do not clash.
var Subnet = netip.MustParsePrefix("10.99.0.0/24")

// underlayLink is the name of the underlay interface in each namespace.
const underlayLink = "eth0"

// Pair is two namespaces joined by one veth pair: A's eth0 holds 10.99.0.1/24
// and B's eth0 holds 10.99.0.2/24.
type Pair struct {
	A, B *NS

	closed atomic.Bool
}

// NewPair creates a Pair whose namespace names start with prefix. It undoes
// what it made if it fails.
func NewPair(ctx context.Context, prefix string) (_ *Pair, err error) {
	p := &Pair{}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.Close())
		}
	}()
	if p.A, err = newNS(ctx, prefix, "a"); err != nil {
		return nil, err
	}
	if p.B, err = newNS(ctx, prefix, "b"); err != nil {
		return nil, err
	}
	if _, err := ip(ctx, "-n", p.A.Name, "link", "add", underlayLink, "type", "veth",
		"peer", "name", underlayLink, "netns", p.B.Name); err != nil {
		return nil, err
	}
	for i, ns := range []*NS{p.A, p.B} {
		if err := ns.attach(ctx, i); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Close closes both namespaces. A second Close returns an error wrapping
// net.ErrClosed.
func (p *Pair) Close() error {
	if p.closed.Swap(true) {
		return fmt.Errorf("netns: pair: %w", net.ErrClosed)
	}
	return closeAll(p.A, p.B)
}

// LAN is n namespaces on one Ethernet segment: a bridge, br0, in a hub
// namespace, and a veth pair from the bridge to each node. Node i's eth0
// holds the (i+1)th address of Subnet, so Nodes[0] is 10.99.0.1/24.
type LAN struct {
	Hub   *NS
	Nodes []*NS

	closed atomic.Bool
}

// NewLAN creates a LAN of n nodes (1 <= n <= 253) whose namespace names start
// with prefix. It undoes what it made if it fails.
func NewLAN(ctx context.Context, prefix string, n int) (_ *LAN, err error) {
	if n < 1 || n > 253 {
		return nil, fmt.Errorf("netns: LAN of %d nodes, want 1 to 253", n)
	}
	l := &LAN{}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
		}
	}()
	if l.Hub, err = newNS(ctx, prefix, "hub"); err != nil {
		return nil, err
	}
	if _, err := ip(ctx, "-n", l.Hub.Name, "link", "add", "br0", "type", "bridge"); err != nil {
		return nil, err
	}
	if _, err := ip(ctx, "-n", l.Hub.Name, "link", "set", "br0", "up"); err != nil {
		return nil, err
	}
	for i := range n {
		ns, err := newNS(ctx, prefix, fmt.Sprintf("n%d", i))
		if err != nil {
			return nil, err
		}
		l.Nodes = append(l.Nodes, ns)
		port := fmt.Sprintf("p%d", i)
		if _, err := ip(ctx, "-n", l.Hub.Name, "link", "add", port, "type", "veth",
			"peer", "name", underlayLink, "netns", ns.Name); err != nil {
			return nil, err
		}
		if _, err := ip(ctx, "-n", l.Hub.Name, "link", "set", port, "master", "br0", "up"); err != nil {
			return nil, err
		}
		if err := ns.attach(ctx, i); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Close closes the nodes and the hub. A second Close returns an error
// wrapping net.ErrClosed.
func (l *LAN) Close() error {
	if l.closed.Swap(true) {
		return fmt.Errorf("netns: LAN: %w", net.ErrClosed)
	}
	return closeAll(append(l.Nodes, l.Hub)...)
}

// attach gives the namespace's eth0 the (i+1)th address of Subnet and sets
// it up.
func (ns *NS) attach(ctx context.Context, i int) error {
	a := Subnet.Addr()
	for range i + 1 {
		a = a.Next()
	}
	if _, err := ip(ctx, "-n", ns.Name, "addr", "add",
		netip.PrefixFrom(a, Subnet.Bits()).String(), "dev", underlayLink); err != nil {
		return err
	}
	if _, err := ip(ctx, "-n", ns.Name, "link", "set", underlayLink, "up"); err != nil {
		return err
	}
	ns.Link, ns.Addr = underlayLink, a
	return nil
}

// closeAll closes the namespaces that exist, and joins their errors.
func closeAll(nss ...*NS) error {
	var errs []error
	for _, ns := range nss {
		if ns != nil {
			errs = append(errs, ns.Close())
		}
	}
	return errors.Join(errs...)
}
