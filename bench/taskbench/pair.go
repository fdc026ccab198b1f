// Package taskbench measures what tasks cost (node.StartTask, Task.Dial):
// the time from starting a task to the first byte of a peer's reply, the
// cost of WhoIs on the peer, and the rate of short connections from a task's
// address against the agent's own. Everything runs in one process on two
// embedded nodes (gVisor netstack and wireguard-go on 127.0.0.1), so it
// needs no root.
//
// A Pair is the two nodes, A and B, with B's services; its methods measure.
package taskbench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/agent6/agent6/bench/smallflow"
	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
)

// Ports of B's services.
const (
	// HelloPort answers each connection with Greeting and closes it.
	HelloPort = 80
	// FlowPort is a smallflow server (smallflow.Serve, Size bytes each way).
	FlowPort = 9000
)

// Greeting is what the hello service writes.
const Greeting = "hello\n"

// Pair is two embedded nodes of one organisation: A, which starts tasks
// and dials, and B, which serves. Its methods are safe for concurrent use
// but measure best one at a time.
type Pair struct {
	A, B *node.Node

	stop context.CancelFunc
	wg   sync.WaitGroup // B's services
}

// NewPair starts A and B with credentials from a new CA (trust domain
// bench.example), B joining through A's token, and returns once each has
// admitted the other and a connection from A to B has gone through (so the
// WireGuard session is up). logger receives both nodes' logs; nil discards
// them.
func NewPair(ctx context.Context, logger *slog.Logger) (*Pair, error) {
	ca, err := identity.NewCA("bench.example", 24*time.Hour, time.Now().Add(-time.Minute))
	if err != nil {
		return nil, err
	}
	bundle, err := identity.ParseBundle(ca.CertificatePEM())
	if err != nil {
		return nil, err
	}
	mk := func(name string, join ...string) (*node.Node, error) {
		k, err := identity.GeneratePrivateKey()
		if err != nil {
			return nil, err
		}
		der, err := ca.Issue(identity.IssueRequest{Key: k.Public(), Name: name, TTL: 12 * time.Hour}, time.Time{})
		if err != nil {
			return nil, err
		}
		n := &node.Node{
			Key: k, Credential: der, Bundle: bundle, Join: join,
			Endpoints: []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 0)},
			Logger:    logger,
		}
		if logger != nil {
			n.Logger = logger.With("node", name)
		}
		if err := n.Up(ctx); err != nil {
			return nil, fmt.Errorf("taskbench: node %s: %w", name, err)
		}
		return n, nil
	}
	p := &Pair{}
	if p.A, err = mk("a"); err != nil {
		return nil, err
	}
	tok, err := p.A.Invite()
	if err == nil {
		p.B, err = mk("b", tok)
	}
	if err != nil {
		p.A.Close()
		return nil, err
	}
	if err := p.serve(); err != nil {
		p.Close()
		return nil, err
	}
	if err := p.ready(ctx); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// serve starts B's hello and smallflow services.
func (p *Pair) serve() error {
	hello, err := p.B.Listen("tcp", fmt.Sprintf(":%d", HelloPort))
	if err != nil {
		return err
	}
	flow, err := p.B.Listen("tcp", fmt.Sprintf(":%d", FlowPort))
	if err != nil {
		hello.Close()
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	p.wg.Go(func() { p.helloLoop(ctx, hello) })
	p.wg.Go(func() { smallflow.Serve(ctx, flow, smallflow.Size) })
	return nil
}

// helloLoop answers each connection on ln with Greeting until ctx is done.
func (p *Pair) helloLoop(ctx context.Context, ln net.Listener) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Go(func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte(Greeting))
		})
	}
}

// ready waits until A and B have admitted each other and A can reach B's
// hello service.
func (p *Pair) ready(ctx context.Context) error {
	for {
		if admits(p.A, p.B.Addr()) && admits(p.B, p.A.Addr()) {
			if _, _, err := p.hello(ctx, p.A.Dial); err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("taskbench: nodes not ready: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func admits(n *node.Node, addr netip.Addr) bool {
	for _, m := range n.Members() {
		if m.Addr == addr && m.State == "alive" {
			return true
		}
	}
	return false
}

// Dialer is node.Node.Dial or node.Task.Dial.
type Dialer = smallflow.DialFunc

// HelloAddr is B's hello service, as a Dial address.
func (p *Pair) HelloAddr() string { return netip.AddrPortFrom(p.B.Addr(), HelloPort).String() }

// FlowAddr is B's smallflow service, as a Dial address.
func (p *Pair) FlowAddr() string { return netip.AddrPortFrom(p.B.Addr(), FlowPort).String() }

// hello connects to B's hello service with dial and waits for the first
// byte of the greeting. It returns the connection's local address and when
// that byte arrived.
func (p *Pair) hello(ctx context.Context, dial Dialer) (netip.Addr, time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", p.HelloAddr())
	if err != nil {
		return netip.Addr{}, time.Time{}, err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		return netip.Addr{}, time.Time{}, err
	}
	at := time.Now()
	if b[0] != Greeting[0] {
		return netip.Addr{}, at, fmt.Errorf("taskbench: greeting starts with %q", b[0])
	}
	return c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(), at, nil
}

// Close stops B's services and both nodes, and waits for them.
func (p *Pair) Close() error {
	if p.stop != nil {
		p.stop()
	}
	var wg sync.WaitGroup
	var errA, errB error
	wg.Go(func() { errA = p.A.Close() })
	if p.B != nil {
		wg.Go(func() { errB = p.B.Close() })
	}
	wg.Wait()
	p.wg.Wait()
	return errors.Join(errA, errB)
}
