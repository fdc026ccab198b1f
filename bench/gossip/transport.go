package gossip

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// errMuted is what a muted transport's dials return.
var errMuted = errors.New("gossip: transport muted")

// transport wraps the memberlist.Transport of one instance, agent6's or
// bare memberlist's alike. It counts the bytes memberlist writes, to
// packets and to streams, and it can be muted to simulate a crash: a muted
// transport drops every packet and stream, both ways, while the instance
// behind it keeps running. Its methods are safe for concurrent use.
type transport struct {
	memberlist.Transport

	packetBytes atomic.Uint64 // payload of packets written
	streamBytes atomic.Uint64 // bytes written to streams, both dialled and accepted
	muted       atomic.Bool

	packets chan *memberlist.Packet // relayed from the inner transport
	streams chan net.Conn
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup // the two relays
}

var _ memberlist.Transport = (*transport)(nil)

// wrapTransport starts the relays that carry inner's packets and streams
// to memberlist; Shutdown stops them.
func wrapTransport(inner memberlist.Transport) *transport {
	t := &transport{
		Transport: inner,
		packets:   make(chan *memberlist.Packet),
		streams:   make(chan net.Conn),
		done:      make(chan struct{}),
	}
	t.wg.Go(t.relayPackets)
	t.wg.Go(t.relayStreams)
	return t
}

// mute drops all traffic from now on.
func (t *transport) mute() { t.muted.Store(true) }

// bytes returns the bytes memberlist has written so far.
func (t *transport) bytes() uint64 { return t.packetBytes.Load() + t.streamBytes.Load() }

func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.muted.Load() {
		return time.Now(), nil
	}
	ts, err := t.Transport.WriteTo(b, addr)
	if err == nil {
		t.packetBytes.Add(uint64(len(b)))
	}
	return ts, err
}

func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.muted.Load() {
		return nil, errMuted
	}
	c, err := t.Transport.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return &countConn{Conn: c, t: t}, nil
}

func (t *transport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *transport) StreamCh() <-chan net.Conn { return t.streams }

// Shutdown shuts the inner transport down, while memberlist still reads
// what the relays pass on, then stops the relays.
func (t *transport) Shutdown() error {
	err := t.Transport.Shutdown()
	t.once.Do(func() { close(t.done) })
	t.wg.Wait()
	return err
}

func (t *transport) relayPackets() {
	in := t.Transport.PacketCh()
	for {
		select {
		case p := <-in:
			if t.muted.Load() {
				continue
			}
			select {
			case t.packets <- p:
			case <-t.done:
				return
			}
		case <-t.done:
			return
		}
	}
}

func (t *transport) relayStreams() {
	in := t.Transport.StreamCh()
	for {
		select {
		case c := <-in:
			if t.muted.Load() {
				c.Close()
				continue
			}
			select {
			case t.streams <- &countConn{Conn: c, t: t}:
			case <-t.done:
				c.Close()
				return
			}
		case <-t.done:
			return
		}
	}
}

// countConn is a memberlist stream whose writes are counted, and which
// fails once its transport is muted.
type countConn struct {
	net.Conn
	t *transport
}

func (c *countConn) Write(b []byte) (int, error) {
	if c.t.muted.Load() {
		return 0, errMuted
	}
	n, err := c.Conn.Write(b)
	c.t.streamBytes.Add(uint64(n))
	return n, err
}

func (c *countConn) Read(b []byte) (int, error) {
	if c.t.muted.Load() {
		return 0, errMuted
	}
	return c.Conn.Read(b)
}
