package dns_test

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/agent6/agent6/node/dns"
)

type agents []dns.Agent

func (a agents) Agents() []dns.Agent { return a }

var (
	planner = dns.Agent{Name: "planner", TrustDomain: "example.org", Addr: netip.MustParseAddr("2001:21::1")}
	tool    = dns.Agent{Name: "Tool_1", TrustDomain: "other.example", Addr: netip.MustParseAddr("2001:21::2")}
	known   = agents{planner, tool}
)

func question(name string, qtype uint16) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

func TestName(t *testing.T) {
	if got := dns.Name("Tool_1", "other.example"); got != "tool_1.other.example.agent6." {
		t.Fatalf("Name = %q", got)
	}
}

func TestAnswer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		qtype  uint16
		rcode  int
		result dns.Result
		addr   netip.Addr // the one AAAA expected, if valid
	}{
		{"planner.example.org.agent6.", mdns.TypeAAAA, mdns.RcodeSuccess, dns.Answered, planner.Addr},
		{"PLANNER.Example.ORG.agent6.", mdns.TypeAAAA, mdns.RcodeSuccess, dns.Answered, planner.Addr},
		{"tool_1.other.example.agent6.", mdns.TypeANY, mdns.RcodeSuccess, dns.Answered, tool.Addr},
		{"planner.example.org.agent6.", mdns.TypeA, mdns.RcodeSuccess, dns.NoData, netip.Addr{}},
		{"example.org.agent6.", mdns.TypeAAAA, mdns.RcodeSuccess, dns.NoData, netip.Addr{}}, // empty non-terminal
		{"org.agent6.", mdns.TypeAAAA, mdns.RcodeSuccess, dns.NoData, netip.Addr{}},
		{"agent6.", mdns.TypeSOA, mdns.RcodeSuccess, dns.Answered, netip.Addr{}},
		{"agent6.", mdns.TypeAAAA, mdns.RcodeSuccess, dns.NoData, netip.Addr{}},
		{"nobody.example.org.agent6.", mdns.TypeAAAA, mdns.RcodeNameError, dns.NXDomain, netip.Addr{}},
		{"planner.other.example.agent6.", mdns.TypeAAAA, mdns.RcodeNameError, dns.NXDomain, netip.Addr{}},
		{"x.planner.example.org.agent6.", mdns.TypeAAAA, mdns.RcodeNameError, dns.NXDomain, netip.Addr{}},
		{"lanner.example.org.agent6.", mdns.TypeAAAA, mdns.RcodeNameError, dns.NXDomain, netip.Addr{}},
		{"planner.example.org.", mdns.TypeAAAA, mdns.RcodeRefused, dns.Refused, netip.Addr{}},
		{"xagent6.", mdns.TypeAAAA, mdns.RcodeRefused, dns.Refused, netip.Addr{}},
		{".", mdns.TypeNS, mdns.RcodeRefused, dns.Refused, netip.Addr{}},
	} {
		resp, res := dns.Answer(question(tc.name, tc.qtype), known)
		if resp.Rcode != tc.rcode || res != tc.result {
			t.Errorf("%s %s: rcode %s, %s; want %s, %s", tc.name, mdns.TypeToString[tc.qtype],
				mdns.RcodeToString[resp.Rcode], res, mdns.RcodeToString[tc.rcode], tc.result)
			continue
		}
		if tc.addr.IsValid() {
			if len(resp.Answer) != 1 {
				t.Errorf("%s: answer %v", tc.name, resp.Answer)
				continue
			}
			aaaa, ok := resp.Answer[0].(*mdns.AAAA)
			if !ok || netip.MustParseAddr(aaaa.AAAA.String()) != tc.addr || aaaa.Hdr.Name != tc.name || aaaa.Hdr.Ttl != 30 {
				t.Errorf("%s: answer %v, want %s", tc.name, resp.Answer[0], tc.addr)
			}
		}
		if tc.result == dns.NoData || tc.result == dns.NXDomain {
			if len(resp.Ns) != 1 || resp.Ns[0].Header().Rrtype != mdns.TypeSOA || len(resp.Answer) != 0 {
				t.Errorf("%s: negative answer without the SOA: %v", tc.name, resp)
			}
		}
		if authoritative := tc.result != dns.Refused; resp.Authoritative != authoritative || resp.RecursionAvailable {
			t.Errorf("%s: AA=%v RA=%v", tc.name, resp.Authoritative, resp.RecursionAvailable)
		}
	}

	// Other opcodes, classes and shapes.
	m := question("planner.example.org.agent6.", mdns.TypeAAAA)
	m.Opcode = mdns.OpcodeNotify
	if resp, res := dns.Answer(m, known); resp.Rcode != mdns.RcodeNotImplemented || res != dns.NotImplemented {
		t.Errorf("NOTIFY: %s %s", mdns.RcodeToString[resp.Rcode], res)
	}
	m = question("planner.example.org.agent6.", mdns.TypeAAAA)
	m.Question[0].Qclass = mdns.ClassCHAOS
	if resp, res := dns.Answer(m, known); resp.Rcode != mdns.RcodeRefused || res != dns.Refused {
		t.Errorf("CH class: %s %s", mdns.RcodeToString[resp.Rcode], res)
	}
	m = question("planner.example.org.agent6.", mdns.TypeAAAA)
	m.Question = append(m.Question, m.Question[0])
	if resp, res := dns.Answer(m, known); resp.Rcode != mdns.RcodeFormatError || res != dns.Malformed {
		t.Errorf("two questions: %s %s", mdns.RcodeToString[resp.Rcode], res)
	}
	// Two agents under one name (a name that differs only in case, or a
	// dotted agent name against a deeper trust domain) both answer.
	twin := dns.Agent{Name: "PLANNER", TrustDomain: "example.org", Addr: netip.MustParseAddr("2001:21::3")}
	resp, _ := dns.Answer(question("planner.example.org.agent6.", mdns.TypeAAAA), append(agents{twin}, known...))
	if len(resp.Answer) != 2 {
		t.Errorf("two agents, one name: %v", resp.Answer)
	}
	// EDNS is answered in kind.
	m = question("planner.example.org.agent6.", mdns.TypeAAAA)
	m.SetEdns0(4096, false)
	if resp, _ := dns.Answer(m, known); resp.IsEdns0() == nil {
		t.Error("EDNS query answered without OPT")
	}
}

// serve starts a Server on loopback UDP and TCP sockets.
func serve(t *testing.T, src dns.Source) (*dns.Server, string) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		t.Skipf("no TCP port matching UDP %s: %v", pc.LocalAddr(), err)
	}
	s := &dns.Server{Source: src}
	if err := s.Start(pc, ln); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, pc.LocalAddr().String()
}

func TestServer(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	s, addr := serve(t, known)
	for _, network := range []string{"udp", "tcp"} {
		c := &mdns.Client{Net: network, Timeout: 5 * time.Second}
		resp, _, err := c.Exchange(question("planner.example.org.agent6.", mdns.TypeAAAA), addr)
		if err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		if len(resp.Answer) != 1 || resp.Answer[0].(*mdns.AAAA).AAAA.String() != planner.Addr.String() {
			t.Fatalf("%s: %v", network, resp)
		}
		if resp, _, err = c.Exchange(question("nobody.example.org.agent6.", mdns.TypeAAAA), addr); err != nil || resp.Rcode != mdns.RcodeNameError {
			t.Fatalf("%s: unknown name: %v %v", network, resp, err)
		}
		if resp, _, err = c.Exchange(question("example.com.", mdns.TypeAAAA), addr); err != nil || resp.Rcode != mdns.RcodeRefused {
			t.Fatalf("%s: outside the zone: %v %v", network, resp, err)
		}
	}

	// Malformed input: garbage, a header alone with a question count the
	// body lacks, a response, two questions. Each is counted; the server
	// goes on answering.
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	two := question("planner.example.org.agent6.", mdns.TypeAAAA)
	two.Question = append(two.Question, two.Question[0])
	twoWire, _ := two.Pack()
	reply := question("planner.example.org.agent6.", mdns.TypeAAAA)
	reply.Response = true
	replyWire, _ := reply.Pack()
	for _, b := range [][]byte{{1, 2, 3}, {0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}, replyWire, twoWire} {
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Malformed < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	st := s.Stats()
	if st.Malformed != 4 || st.Answered != 2 || st.NXDomain != 2 || st.Refused != 2 {
		t.Fatalf("stats = %+v", st)
	}
	resp, _, err := (&mdns.Client{Timeout: 5 * time.Second}).Exchange(question("tool_1.other.example.agent6.", mdns.TypeAAAA), addr)
	if err != nil || len(resp.Answer) != 1 {
		t.Fatalf("after malformed input: %v %v", resp, err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err == nil {
		t.Fatal("second Close succeeded")
	}
}

// Queries in parallel while the source changes under them.
func TestServerConcurrent(t *testing.T) {
	_, addr := serve(t, known)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			c := &mdns.Client{Timeout: 5 * time.Second}
			for range 20 {
				resp, _, err := c.Exchange(question("planner.example.org.agent6.", mdns.TypeAAAA), addr)
				if err != nil || len(resp.Answer) != 1 {
					t.Errorf("%v %v", resp, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestStartRefusals(t *testing.T) {
	s := &dns.Server{Source: known}
	if err := s.Start(nil, nil); err == nil {
		t.Error("Start with no sockets succeeded")
	}
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	if err := (&dns.Server{}).Start(pc, nil); err == nil {
		t.Error("Start without a Source succeeded")
	}
	if _, err := pc.WriteTo([]byte{0}, pc.LocalAddr()); err == nil {
		t.Error("a refused socket was left open")
	}
}

func FuzzAnswer(f *testing.F) {
	for _, name := range []string{"planner.example.org.agent6.", "agent6.", "example.org.agent6.", "x.", "."} {
		b, _ := question(name, mdns.TypeAAAA).Pack()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(mdns.Msg)
		if req.Unpack(b) != nil {
			return
		}
		resp, res := dns.Answer(req, known)
		if res == "" {
			t.Fatal("no result")
		}
		if _, err := resp.Pack(); err != nil && res == dns.Answered {
			t.Fatalf("answer does not pack: %v", err)
		}
	})
}
