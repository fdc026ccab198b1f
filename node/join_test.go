package node_test

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/agent6/agent6/node"
)

// slowStreams is a memberlist transport whose accepted streams, once slow
// is set, send what is written to them only after delay: a seed too busy
// to answer push/pulls promptly, as in a join storm, that still reads and
// merges the joiner's state at once.
type slowStreams struct {
	memberlist.Transport
	slow    atomic.Bool
	delay   time.Duration
	streams chan net.Conn
	done    chan struct{}
	once    sync.Once
	stop    sync.Once
}

func (s *slowStreams) StreamCh() <-chan net.Conn {
	s.once.Do(func() {
		s.streams = make(chan net.Conn)
		go func() {
			for {
				var c net.Conn
				select {
				case c = <-s.Transport.StreamCh():
				case <-s.done:
					return
				}
				if s.slow.Load() {
					c = &slowConn{Conn: c, at: time.Now().Add(s.delay)}
				}
				select {
				case s.streams <- c:
				case <-s.done:
					c.Close()
					return
				}
			}
		}()
	})
	return s.streams
}

// Shutdown stops the relay, then the transport beneath.
func (s *slowStreams) Shutdown() error {
	s.stop.Do(func() { close(s.done) })
	return s.Transport.Shutdown()
}

// slowConn holds its writes back until at; Close waits for them.
type slowConn struct {
	net.Conn
	at time.Time
	wg sync.WaitGroup
}

func (c *slowConn) Write(b []byte) (int, error) {
	b = append([]byte(nil), b...)
	c.wg.Go(func() {
		time.Sleep(time.Until(c.at))
		c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		c.Conn.Write(b)
	})
	return len(b), nil
}

func (c *slowConn) Close() error {
	c.wg.Wait()
	return c.Conn.Close()
}

// A joiner whose seed is slow to send its state back does not wait for
// it: two seconds in, it push/pulls with a peer that heard of it through
// the seed's gossip and is joined.
func TestJoinHedgesSlowSeed(t *testing.T) {
	const delay = 8 * time.Second
	o := newOrg(t, "example.org")
	tr := &slowStreams{delay: delay, done: make(chan struct{})}
	k, der := o.issue(t, "seed", time.Hour)
	seed := &node.Node{
		Key: k, Credential: der, Bundle: o.bundle,
		Endpoints: []netip.AddrPort{netip.AddrPortFrom(loopback, 0)},
		TuneGossip: func(c *memberlist.Config) {
			fastGossip(c)
			tr.Transport = c.Transport
			c.Transport = tr
		},
		Logger: testLogger(t),
	}
	if err := seed.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer seed.Close()
	tok := invite(t, seed)
	nodes := []*node.Node{seed, o.member(t, "agent-0", o.bundle, tok), o.member(t, "agent-1", o.bundle, tok)}
	waitFor(t, 20*time.Second, "full mesh", func() bool { return fullMesh(nodes) })

	tr.slow.Store(true)
	start := time.Now()
	late := o.member(t, "late", o.bundle, tok)
	select {
	case <-late.Joined():
	case <-time.After(delay):
		t.Fatalf("join took the slow seed's %v: not hedged", delay)
	}
	if took := time.Since(start); took > delay*3/4 {
		t.Fatalf("join took %v, the seed answers after %v", took.Round(time.Millisecond), delay)
	}
	nodes = append(nodes, late)
	waitFor(t, 20*time.Second, "full mesh with the late node", func() bool { return fullMesh(nodes) })
}
