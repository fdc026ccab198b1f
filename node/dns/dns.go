// Package dns serves the overlay's names: <name>.<trust-domain>.agent6.
// resolves (AAAA) to the address of the agent whose credential is
// spiffe://<trust-domain>/agent/<name>. A node answers on port 53 of its
// own overlay address, over UDP and TCP, from what its membership knows;
// the answers are authoritative for the zone agent6. and nothing else.
//
//	<name>.<trust-domain>.agent6.  AAAA   the agent's address
//	a known name, another type     NOERROR, no answer (NODATA)
//	a parent of a known name       NOERROR, no answer (empty non-terminal)
//	any other name under agent6.   NXDOMAIN
//	a name outside agent6.         REFUSED (this is not a recursive resolver)
//	unparsable query               FORMERR (or nothing), counted as malformed
//
// Names compare case-insensitively. Negative answers carry the zone's SOA.
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
)

// Zone is the DNS zone of the overlay.
const Zone = "agent6."

// Port is the DNS port a node serves on its overlay address.
const Port = 53

// TTLs of answers. An address never changes for a name's key, so answers
// may be cached a while; negative answers only briefly, since a new agent
// may be admitted at any moment.
const (
	TTL         = 30 * time.Second
	NegativeTTL = 5 * time.Second
)

// maxUDPSize is the largest UDP answer sent to an EDNS client (the DNS
// flag day 2020 value, safe through the tunnel's MTU).
const maxUDPSize = 1232

// Agent is one name the server answers for.
type Agent struct {
	Name        string // the agent name: the last segment of spiffe://<td>/agent/<name>
	TrustDomain string
	Addr        netip.Addr
}

// Name returns the fully qualified DNS name of agent name in trustDomain:
// "<name>.<trust-domain>.agent6.", lower case.
func Name(name, trustDomain string) string {
	return strings.ToLower(name + "." + trustDomain + "." + Zone)
}

// Source lists the agents the server answers for. Agents is called once
// per query, from several goroutines at once; it must not block, and the
// server neither keeps nor modifies the slice.
type Source interface {
	Agents() []Agent
}

// Stats are the server's counters, one per kind of answer.
type Stats struct {
	Answered       uint64 `json:"answered"`        // NOERROR with addresses
	NoData         uint64 `json:"nodata"`          // NOERROR, no address of that type
	NXDomain       uint64 `json:"nxdomain"`        // no such agent
	Refused        uint64 `json:"refused"`         // outside agent6.
	Malformed      uint64 `json:"malformed"`       // unparsable or not a single question
	NotImplemented uint64 `json:"not_implemented"` // opcodes other than QUERY
}

// ByResult returns the counters keyed by a short result name, as metrics
// label them.
func (s Stats) ByResult() map[string]uint64 {
	return map[string]uint64{
		"answered": s.Answered, "nodata": s.NoData, "nxdomain": s.NXDomain,
		"refused": s.Refused, "malformed": s.Malformed, "not_implemented": s.NotImplemented,
	}
}

// Server answers DNS queries for the agent6. zone. Set Source (required)
// and Logger (nil discards), then Start it; its methods are safe for
// concurrent use.
type Server struct {
	Source Source
	Logger *slog.Logger

	answered, nodata, nxdomain, refused, malformed, notImpl atomic.Uint64

	mu      sync.Mutex // guards the fields below
	started bool
	closed  bool
	servers []*mdns.Server
	wg      sync.WaitGroup // one goroutine per server
}

func (s *Server) count(r Result) {
	switch r {
	case Answered:
		s.answered.Add(1)
	case NoData:
		s.nodata.Add(1)
	case NXDomain:
		s.nxdomain.Add(1)
	case Refused:
		s.refused.Add(1)
	case NotImplemented:
		s.notImpl.Add(1)
	default:
		s.malformed.Add(1)
	}
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	return Stats{
		Answered: s.answered.Load(), NoData: s.nodata.Load(), NXDomain: s.nxdomain.Load(),
		Refused: s.refused.Load(), Malformed: s.malformed.Load(), NotImplemented: s.notImpl.Load(),
	}
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Start serves DNS on pc (UDP) and ln (TCP); either may be nil, not both.
// The server owns them from then on and closes them in Close, or at once
// if Start fails. Start returns when both are being served.
func (s *Server) Start(pc net.PacketConn, ln net.Listener) error {
	closeAll := func() {
		if pc != nil {
			pc.Close()
		}
		if ln != nil {
			ln.Close()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		closeAll()
		return fmt.Errorf("dns: start: %w", net.ErrClosed)
	case s.started:
		closeAll()
		return errors.New("dns: already started")
	case s.Source == nil:
		closeAll()
		return errors.New("dns: Source is required")
	case pc == nil && ln == nil:
		return errors.New("dns: nothing to serve on")
	}
	s.started = true
	var errs []error
	if pc != nil {
		errs = append(errs, s.serve(&mdns.Server{PacketConn: pc, UDPSize: 4096}, "udp"))
	}
	if ln != nil {
		errs = append(errs, s.serve(&mdns.Server{Listener: ln}, "tcp"))
	}
	if err := errors.Join(errs...); err != nil {
		s.shutdown()
		closeAll()
		return err
	}
	return nil
}

// serve starts one miekg/dns server and waits until it serves; called
// with s.mu held.
func (s *Server) serve(srv *mdns.Server, network string) error {
	ready := make(chan struct{})
	errc := make(chan error, 1)
	srv.Handler = mdns.HandlerFunc(s.serveDNS)
	srv.MsgAcceptFunc = s.accept
	srv.MsgInvalidFunc = s.invalid
	srv.NotifyStartedFunc = func() { close(ready) }
	s.wg.Go(func() {
		err := srv.ActivateAndServe()
		if err != nil {
			s.log().Warn("dns: server stopped", "net", network, "err", err)
		}
		errc <- err
	})
	select {
	case <-ready:
		s.servers = append(s.servers, srv)
		return nil
	case err := <-errc:
		return fmt.Errorf("dns: serve %s: %w", network, err)
	}
}

// Close stops serving, closes the sockets and waits for the server's
// goroutines. A second Close returns an error wrapping net.ErrClosed.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("dns: close: %w", net.ErrClosed)
	}
	s.closed = true
	s.shutdown()
	s.mu.Unlock()
	return nil
}

// shutdown stops the servers started so far and waits; called with s.mu
// held (serveDNS never takes it).
func (s *Server) shutdown() {
	for _, srv := range s.servers {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := srv.ShutdownContext(ctx); err != nil {
			s.log().Warn("dns: shutdown", "err", err)
		}
		cancel()
	}
	s.servers = nil
	s.wg.Wait()
}

// accept sorts queries by their header before they are parsed: what
// miekg/dns rejects is counted.
func (s *Server) accept(h mdns.Header) mdns.MsgAcceptAction {
	a := mdns.DefaultMsgAcceptFunc(h)
	switch a {
	case mdns.MsgReject, mdns.MsgIgnore:
		s.count(Malformed)
	case mdns.MsgRejectNotImplemented:
		s.count(NotImplemented)
	}
	return a
}

// invalid counts a message that could not be parsed.
func (s *Server) invalid(m []byte, err error) {
	s.count(Malformed)
	s.log().Debug("dns: malformed query", "bytes", len(m), "err", err)
}

func (s *Server) serveDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	resp, res := Answer(req, s.Source.Agents())
	s.count(res)
	if w.LocalAddr().Network() == "udp" {
		size := mdns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = min(max(int(opt.UDPSize()), mdns.MinMsgSize), maxUDPSize)
		}
		resp.Truncate(size)
	}
	if err := w.WriteMsg(resp); err != nil {
		s.log().Debug("dns: write answer", "err", err)
	}
}

// Result says how Answer answered.
type Result string

// Results of Answer.
const (
	Answered       Result = "answered"
	NoData         Result = "nodata"
	NXDomain       Result = "nxdomain"
	Refused        Result = "refused"
	Malformed      Result = "malformed"
	NotImplemented Result = "not_implemented"
)

// Answer returns the response to req given the known agents. It never
// fails: every request, however odd, gets a response (pure; the server
// adds only UDP truncation).
func Answer(req *mdns.Msg, agents []Agent) (*mdns.Msg, Result) {
	resp := new(mdns.Msg)
	if req.Opcode != mdns.OpcodeQuery {
		resp.SetRcode(req, mdns.RcodeNotImplemented)
		return withEDNS(resp, req), NotImplemented
	}
	if len(req.Question) != 1 || req.Response {
		resp.SetRcodeFormatError(req)
		return withEDNS(resp, req), Malformed
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if !inZone(name) || (q.Qclass != mdns.ClassINET && q.Qclass != mdns.ClassANY) {
		resp.SetRcode(req, mdns.RcodeRefused)
		return withEDNS(resp, req), Refused
	}
	resp.SetReply(req)
	resp.Authoritative = true
	if name == Zone {
		if q.Qtype == mdns.TypeSOA || q.Qtype == mdns.TypeANY {
			resp.Answer = []mdns.RR{soa()}
			return withEDNS(resp, req), Answered
		}
		resp.Ns = []mdns.RR{soa()}
		return withEDNS(resp, req), NoData
	}
	rest := name[:len(name)-len(Zone)-1] // "<name>.<trust-domain>", no dot at the end
	var addrs []netip.Addr
	parent := false
	for _, a := range agents {
		switch {
		case matches(rest, a):
			if a.Addr.Is6() && !contains(addrs, a.Addr) {
				addrs = append(addrs, a.Addr)
			}
		case !parent && isParent(rest, a):
			parent = true
		}
	}
	if len(addrs) == 0 {
		resp.Ns = []mdns.RR{soa()}
		if parent {
			return withEDNS(resp, req), NoData
		}
		resp.Rcode = mdns.RcodeNameError
		return withEDNS(resp, req), NXDomain
	}
	if q.Qtype != mdns.TypeAAAA && q.Qtype != mdns.TypeANY {
		resp.Ns = []mdns.RR{soa()}
		return withEDNS(resp, req), NoData
	}
	for _, a := range addrs {
		resp.Answer = append(resp.Answer, &mdns.AAAA{
			Hdr:  mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeAAAA, Class: mdns.ClassINET, Ttl: uint32(TTL / time.Second)},
			AAAA: a.AsSlice(),
		})
	}
	return withEDNS(resp, req), Answered
}

// inZone reports whether the lower-case FQDN name is agent6. or below it.
func inZone(name string) bool {
	return name == Zone || strings.HasSuffix(name, "."+Zone)
}

// matches reports whether rest ("<name>.<trust-domain>") names agent a.
func matches(rest string, a Agent) bool {
	n, td := a.Name, a.TrustDomain
	return n != "" && td != "" && len(rest) == len(n)+1+len(td) && rest[len(n)] == '.' &&
		strings.EqualFold(rest[:len(n)], n) && strings.EqualFold(rest[len(n)+1:], td)
}

// isParent reports whether rest is a proper ancestor of a's name (an
// empty non-terminal: it exists, with no records of its own).
func isParent(rest string, a Agent) bool {
	if a.Name == "" || a.TrustDomain == "" {
		return false
	}
	full := a.Name + "." + a.TrustDomain
	return len(full) > len(rest) && full[len(full)-len(rest)-1] == '.' && strings.EqualFold(full[len(full)-len(rest):], rest)
}

func contains(addrs []netip.Addr, a netip.Addr) bool {
	for _, b := range addrs {
		if a == b {
			return true
		}
	}
	return false
}

// soa is the zone's SOA record; its minimum is the negative-answer TTL.
func soa() *mdns.SOA {
	neg := uint32(NegativeTTL / time.Second)
	return &mdns.SOA{
		Hdr:     mdns.RR_Header{Name: Zone, Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: neg},
		Ns:      "ns." + Zone,
		Mbox:    "hostmaster." + Zone,
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  neg,
	}
}

// withEDNS adds an OPT record to resp if req had one (RFC 6891).
func withEDNS(resp, req *mdns.Msg) *mdns.Msg {
	if req.IsEdns0() != nil {
		resp.SetEdns0(maxUDPSize, false)
	}
	return resp
}
