package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/agent6/agent6/internal/netns"
)

// dnsHelperEnv makes TestDNSQueryHelper, run as a child process inside a
// namespace, ask each "NET SERVER NAME" of a ';'-separated list and print
// "answer: RCODE ADDR..." for each.
const dnsHelperEnv = "AGENT6_TEST_DNS_QUERY"

func TestDNSQueryHelper(t *testing.T) {
	qs := os.Getenv(dnsHelperEnv)
	if qs == "" {
		t.Skip("helper process for TestSidecarDNSNetns")
	}
	for q := range strings.SplitSeq(qs, ";") {
		f := strings.Fields(q)
		m := new(mdns.Msg)
		m.SetQuestion(f[2], mdns.TypeAAAA)
		resp, _, err := (&mdns.Client{Net: f[0], Timeout: 5 * time.Second}).Exchange(m, net.JoinHostPort(f[1], "53"))
		if err != nil {
			t.Fatal(err)
		}
		out := mdns.RcodeToString[resp.Rcode]
		for _, rr := range resp.Answer {
			if a, ok := rr.(*mdns.AAAA); ok {
				out += " " + a.AAAA.String()
			}
		}
		fmt.Println("answer:", out)
	}
}

// askDNS runs the helper in ns with queries ("NET SERVER NAME") and
// returns its answers, in order.
func askDNS(t *testing.T, ns *netns.NS, queries ...string) []string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := ns.Command(ctx, self, "-test.run=^TestDNSQueryHelper$", "-test.v")
	cmd.Env = append(os.Environ(), dnsHelperEnv+"="+strings.Join(queries, ";"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dns queries in %s: %v\n%s", ns.Name, err, out)
	}
	var answers []string
	for line := range strings.SplitSeq(string(out), "\n") {
		if a, ok := strings.CutPrefix(line, "answer: "); ok {
			answers = append(answers, a)
		}
	}
	if len(answers) != len(queries) {
		t.Fatalf("dns helper answered %d of %d queries:\n%s", len(answers), len(queries), out)
	}
	return answers
}

// TestSidecarDNSNetns: two sidecars (kernel TUN, root binds port 53 on the
// overlay address) resolve each other's names over the overlay.
func TestSidecarDNSNetns(t *testing.T) {
	requireNetns(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := buildAgent6(t)
	pair, err := netns.NewPair(ctx, "a6d")
	if err != nil {
		t.Fatal(err)
	}
	defer pair.Close()
	cars, _ := orgSidecars(t, bin, []*netns.NS{pair.A, pair.B}, []string{"planner", "tool"})
	a, b := cars[0], cars[1]

	type check struct{ query, want string }
	for _, side := range []struct {
		ns     *netns.NS
		checks []check
	}{
		{pair.B, []check{ // b asks a, over the overlay
			{"planner.example.org.agent6.", "NOERROR " + a.addr.String()},
			{"tool.example.org.agent6.", "NOERROR " + b.addr.String()},
			{"nobody.example.org.agent6.", "NXDOMAIN"},
			{"example.com.", "REFUSED"},
		}},
		{pair.A, []check{ // a asks itself
			{"tool.example.org.agent6.", "NOERROR " + b.addr.String()},
		}},
	} {
		var queries, want []string
		for _, network := range []string{"udp", "tcp"} {
			for _, c := range side.checks {
				queries = append(queries, network+" "+a.addr.String()+" "+c.query)
				want = append(want, c.want)
			}
		}
		got := askDNS(t, side.ns, queries...)
		for i := range queries {
			if got[i] != want[i] {
				t.Errorf("in %s: %s: %q, want %q", side.ns.Name, queries[i], got[i], want[i])
			}
		}
	}
	out := cli(t, bin, "discover", "--socket", b.socket)
	if !strings.Contains(out, a.addr.String()) || !strings.Contains(out, "spiffe://example.org/agent/planner") || !strings.Contains(out, "allow") {
		t.Errorf("discover at b:\n%s", out)
	}
	out = cli(t, bin, "whois", a.addr.String(), "--socket", b.socket)
	if !strings.Contains(out, "spiffe://example.org/agent/planner") {
		t.Errorf("whois at b:\n%s", out)
	}
}
