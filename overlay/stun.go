package overlay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"
)

// STUN on the node's socket (RFC 8489, with pion/stun): every node
// answers binding requests, so any member with a public address tells the
// others theirs, and the node asks configured servers for its own.

// stunCookie is the STUN magic cookie, bytes 4-7 of every message.
const stunCookie = 0x2112a442

// isSTUN reports whether b is shaped as a STUN message: two zero bits
// first, the magic cookie, and a length field that matches. WireGuard's
// messages start with a type of 1-4 and three zero bytes, so their length
// field reads 0 and they are at least 32 bytes long: none passes.
func isSTUN(b []byte) bool {
	return len(b) >= 20 && b[0]&0xc0 == 0 &&
		binary.BigEndian.Uint32(b[4:]) == stunCookie &&
		int(binary.BigEndian.Uint16(b[2:]))+20 == len(b)
}

// STUN rate limits: per source address, and for all sources together.
const (
	stunPerSource = 10 // requests a second
	stunBurst     = 20
	stunGlobal    = 2000
	stunSources   = 4096 // source addresses tracked
	stunMaxTxns   = 256  // requests of ours awaiting a response
)

// STUNStats counts the STUN traffic on the node's socket.
type STUNStats struct {
	Answered    uint64 // binding requests answered
	RateLimited uint64 // binding requests over a source's or the global rate
	Malformed   uint64 // STUN-shaped datagrams that did not decode, or not a binding
	Responses   uint64 // responses to our requests
	Unsolicited uint64 // responses with no request of ours, or from another address
}

// stunState is the Bind's STUN responder and client.
type stunState struct {
	limit *limiters[netip.Addr]

	mu   sync.Mutex
	txns map[[stun.TransactionIDSize]byte]*stunTxn

	answered, rateLimited, malformed, responses, unsolicited atomic.Uint64
}

type stunTxn struct {
	server netip.AddrPort
	reply  chan netip.AddrPort // buffered, 1
}

func newSTUNState() *stunState {
	return &stunState{
		limit: newLimiters[netip.Addr](stunPerSource, stunBurst, stunSources, stunGlobal, stunGlobal),
		txns:  make(map[[stun.TransactionIDSize]byte]*stunTxn),
	}
}

func (s *stunState) stats() STUNStats {
	return STUNStats{
		Answered: s.answered.Load(), RateLimited: s.rateLimited.Load(), Malformed: s.malformed.Load(),
		Responses: s.responses.Load(), Unsolicited: s.unsolicited.Load(),
	}
}

// handle looks at a STUN-shaped datagram from from: answers a binding
// request, or hands a response to the request waiting for it. send sends
// the answer. Called on the receive path: it does not block.
func (s *stunState) handle(pkt []byte, from netip.AddrPort, now time.Time, send func(netip.AddrPort, []byte)) {
	m := &stun.Message{Raw: pkt}
	if err := m.Decode(); err != nil {
		s.malformed.Add(1)
		return
	}
	switch m.Type {
	case stun.BindingRequest:
		if !s.limit.allow(from.Addr(), 1, now) {
			s.rateLimited.Add(1)
			return
		}
		resp, err := stun.Build(stun.NewTransactionIDSetter(m.TransactionID), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: from.Addr().AsSlice(), Port: int(from.Port())})
		if err != nil {
			s.malformed.Add(1)
			return
		}
		s.answered.Add(1)
		send(from, resp.Raw)
	case stun.BindingSuccess:
		var xor stun.XORMappedAddress
		if err := xor.GetFrom(m); err != nil {
			s.malformed.Add(1)
			return
		}
		addr, ok := netip.AddrFromSlice(xor.IP)
		if !ok || xor.Port <= 0 || xor.Port > 65535 {
			s.malformed.Add(1)
			return
		}
		s.mu.Lock()
		t := s.txns[m.TransactionID]
		if t == nil || t.server != from {
			s.mu.Unlock()
			s.unsolicited.Add(1)
			return
		}
		delete(s.txns, m.TransactionID)
		s.mu.Unlock()
		s.responses.Add(1)
		t.reply <- netip.AddrPortFrom(addr.Unmap(), uint16(xor.Port))
	default:
		s.malformed.Add(1)
	}
}

// ErrNoSTUNResponse is returned when a STUN server did not answer before
// the context ended.
var ErrNoSTUNResponse = errors.New("overlay: no STUN response")

// stunRetransmit is the first retransmission interval of a binding
// request; it doubles, up to stunMaxInterval.
const (
	stunRetransmit  = 250 * time.Millisecond
	stunMaxInterval = 2 * time.Second
)

// STUN asks server, over the node's socket, for the address it sees this
// node at (the reflexive address), retransmitting until ctx is done. Only
// a response from server with the transaction ID of a request sent is
// taken. It blocks; safe for concurrent use.
func (b *Bind) STUN(ctx context.Context, server netip.AddrPort) (netip.AddrPort, error) {
	server = unmap(server)
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("overlay: stun: %w", err)
	}
	t := &stunTxn{server: server, reply: make(chan netip.AddrPort, 1)}
	s := b.stun
	s.mu.Lock()
	if len(s.txns) >= stunMaxTxns {
		s.mu.Unlock()
		return netip.AddrPort{}, errors.New("overlay: stun: too many requests in flight")
	}
	s.txns[req.TransactionID] = t
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.txns, req.TransactionID)
		s.mu.Unlock()
	}()
	interval := stunRetransmit
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case ap := <-t.reply:
			return ap, nil
		case <-ctx.Done():
			return netip.AddrPort{}, fmt.Errorf("%w from %s: %w", ErrNoSTUNResponse, server, ctx.Err())
		case <-timer.C:
			if err := b.sendRaw(server, req.Raw); err != nil && errors.Is(err, net.ErrClosed) {
				return netip.AddrPort{}, fmt.Errorf("overlay: stun: %w", err)
			}
			timer.Reset(interval)
			interval = min(2*interval, stunMaxInterval)
		}
	}
}

// STUNStats reports the STUN traffic on the node's socket.
func (b *Bind) STUNStats() STUNStats { return b.stun.stats() }

func unmap(ap netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) }
