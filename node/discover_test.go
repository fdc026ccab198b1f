package node_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/card"
)

// agent starts an embedded node of o with a card and groups.
func (o *org) agent(t testing.TB, name string, bundle *identity.Bundle, c *card.Card, groups []string, join ...string) *node.Node {
	t.Helper()
	k, _ := identity.GeneratePrivateKey()
	der, err := o.ca.Issue(identity.IssueRequest{Key: k.Public(), Name: name, Groups: groups, TTL: time.Hour}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	n := &node.Node{
		Key: k, Credential: der, Bundle: bundle, Join: join, Card: c,
		Endpoints:  []netip.AddrPort{netip.AddrPortFrom(loopback, 0)},
		TuneGossip: fastGossip,
		Logger:     testLogger(t),
	}
	if err := n.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	o.mu.Lock()
	o.nodes = append(o.nodes, n)
	o.mu.Unlock()
	return n
}

// federation is two organisations that trust each other's CA: a seed and
// a planner in example.org, a search tool in other.example.
type federation struct {
	seed, planner, search *node.Node
}

func newFederation(t *testing.T) federation {
	t.Helper()
	a := newOrg(t, "example.org")
	b := newOrg(t, "other.example")
	both, err := identity.ParseBundle(append(a.ca.CertificatePEM(), b.ca.CertificatePEM()...))
	if err != nil {
		t.Fatal(err)
	}
	var f federation
	f.seed = a.agent(t, "seed", both, nil, nil)
	tok := invite(t, f.seed)
	f.planner = a.agent(t, "planner", both, &card.Card{
		Name: "Trip Planner",
		Skills: []card.Skill{
			{ID: "plan-trip", Tags: []string{"travel", "planning"}},
		},
	}, []string{"planners", "staff"}, tok)
	f.search = b.agent(t, "search", both, &card.Card{
		Name: "Web Search",
		Skills: []card.Skill{
			{ID: "web-search", Tags: []string{"search"}},
			{ID: "summarise", Tags: []string{"text"}},
		},
	}, []string{"tools"}, tok)
	waitFor(t, 20*time.Second, "federated full mesh", func() bool { return fullMesh([]*node.Node{f.seed, f.planner, f.search}) })
	return f
}

func ids(ds []node.Discovery) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.ID)
	}
	return out
}

func TestDiscover(t *testing.T) {
	f := newFederation(t)
	ctx := context.Background()
	const (
		plannerID = "spiffe://example.org/agent/planner"
		searchID  = "spiffe://other.example/agent/search"
		seedID    = "spiffe://example.org/agent/seed"
	)
	for _, tc := range []struct {
		q    node.Query
		want []string
	}{
		{node.Query{}, []string{plannerID, searchID}}, // sorted by SPIFFE ID; the caller excluded
		{node.Query{Skill: "web-search"}, []string{searchID}},
		{node.Query{Skill: "web"}, nil},
		{node.Query{Tag: "travel"}, []string{plannerID}},
		{node.Query{Tag: "text"}, []string{searchID}},
		{node.Query{Name: "planner"}, []string{plannerID}},
		{node.Query{Name: "web search"}, []string{searchID}}, // the card's name, any case
		{node.Query{Name: "seed"}, nil},                      // the caller itself
		{node.Query{TrustDomain: "other.example"}, []string{searchID}},
		{node.Query{TrustDomain: "example.org"}, []string{plannerID}},
		{node.Query{Group: "staff"}, []string{plannerID}},
		{node.Query{Group: "tools", Skill: "summarise"}, []string{searchID}},
		{node.Query{Group: "tools", Skill: "plan-trip"}, nil},
	} {
		got, err := f.seed.Discover(ctx, tc.q)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids(got), tc.want) {
			t.Errorf("Discover(%+v) = %v, want %v", tc.q, ids(got), tc.want)
		}
	}

	// What one result carries, and the decision for this caller: inside
	// the caller's trust domain allowed, across it denied with a reason.
	got, _ := f.seed.Discover(ctx, node.Query{})
	p, s := got[0], got[1]
	if p.Addr != f.planner.Addr() || !p.PublicKey.Equal(f.planner.PublicKey()) || p.Name != "planner" ||
		p.TrustDomain != "example.org" || p.DNSName != "planner.example.org.agent6." || p.State != "alive" ||
		!slices.Equal(p.Groups, []string{"planners", "staff"}) || p.Card == nil || p.Card.Name != "Trip Planner" {
		t.Errorf("planner = %+v", p)
	}
	if !p.Decision.Allow || p.Decision.Rule != node.RuleDefaultSameDomain {
		t.Errorf("planner decision = %+v, want allow", p.Decision)
	}
	if s.Decision.Allow || s.Decision.Rule != node.RuleDefaultCrossDomain ||
		s.Decision.Reason != "no rule allows crossing from example.org to other.example" {
		t.Errorf("search decision = %+v, want deny across domains", s.Decision)
	}
	// From the other side the decisions mirror.
	got, _ = f.search.Discover(ctx, node.Query{})
	if !slices.Equal(ids(got), []string{plannerID, seedID}) || got[0].Decision.Allow || got[1].Decision.Allow ||
		!strings.Contains(got[0].Decision.Reason, "from other.example to example.org") {
		t.Errorf("from search: %+v", got)
	}
	// Cards reach every node.
	got, _ = f.planner.Discover(ctx, node.Query{Skill: "summarise"})
	if len(got) != 1 || got[0].Card == nil || len(got[0].Card.Skills) != 2 || !got[0].Card.HasTag("search") {
		t.Errorf("card at planner = %+v", got)
	}
}

func TestDiscoverWithoutMembership(t *testing.T) {
	n := &node.Node{}
	if _, err := n.Discover(context.Background(), node.Query{}); err == nil {
		t.Fatal("Discover before Up succeeded")
	}
	if err := n.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if _, err := n.Discover(context.Background(), node.Query{}); !errors.Is(err, node.ErrNoMembership) {
		t.Fatalf("Discover without membership: %v", err)
	}
	if _, ok := n.DNSStats(); ok {
		t.Fatal("DNS served without membership")
	}
}

func TestDefaultPolicy(t *testing.T) {
	a := node.Identity{TrustDomain: "a.example"}
	b := node.Identity{TrustDomain: "b.example"}
	if d := (node.DefaultPolicy{}).Decide(a, a); !d.Allow || d.Rule != node.RuleDefaultSameDomain {
		t.Errorf("same domain: %+v", d)
	}
	if d := (node.DefaultPolicy{}).Decide(a, b); d.Allow || d.Reason != "no rule allows crossing from a.example to b.example" {
		t.Errorf("across domains: %+v", d)
	}
	if d := (node.DefaultPolicy{}).Decide(node.Identity{}, node.Identity{}); d.Allow {
		t.Errorf("no identity: %+v", d)
	}
}

// exchangeDNS asks the DNS server of the node at server, from node from,
// over the overlay.
func exchangeDNS(t *testing.T, from *node.Node, server netip.Addr, network, name string) *mdns.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := from.Dial(ctx, network, netip.AddrPortFrom(server, 53).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := new(mdns.Msg)
	m.SetQuestion(name, mdns.TypeAAAA)
	cl := &mdns.Client{Net: network, Timeout: 5 * time.Second}
	resp, _, err := cl.ExchangeWithConn(m, &mdns.Conn{Conn: c})
	if err != nil {
		t.Fatalf("%s %s: %v", network, name, err)
	}
	return resp
}

func aaaa(resp *mdns.Msg) []netip.Addr {
	var out []netip.Addr
	for _, rr := range resp.Answer {
		if a, ok := rr.(*mdns.AAAA); ok {
			ip, _ := netip.AddrFromSlice(a.AAAA)
			out = append(out, ip)
		}
	}
	return out
}

// Every node serves the agent6. zone on its overlay address; a peer asks
// it over the overlay, by TCP and by UDP. TCP first: the first packet
// between two members waits for a WireGuard handshake, 5 s when it
// crossed one from the peer (wireguard-go retries then), as long as a
// UDP query's timeout here; the TCP dial waits up to 10 s, and then the
// session is up for UDP. (A real resolver would retry the query.)
func TestDNSOverOverlay(t *testing.T) {
	f := newFederation(t)
	for _, network := range []string{"tcp", "udp"} {
		// The search tool asks the planner's server about the planner
		// itself, a third agent, and itself.
		for name, want := range map[string]netip.Addr{
			"planner.example.org.agent6.":  f.planner.Addr(),
			"Seed.Example.Org.agent6.":     f.seed.Addr(),
			"search.other.example.agent6.": f.search.Addr(),
		} {
			resp := exchangeDNS(t, f.search, f.planner.Addr(), network, name)
			if got := aaaa(resp); resp.Rcode != mdns.RcodeSuccess || len(got) != 1 || got[0] != want || !resp.Authoritative {
				t.Errorf("%s %s: %s %v, want %s", network, name, mdns.RcodeToString[resp.Rcode], got, want)
			}
		}
		if resp := exchangeDNS(t, f.search, f.planner.Addr(), network, "nobody.example.org.agent6."); resp.Rcode != mdns.RcodeNameError {
			t.Errorf("%s unknown name: %s", network, mdns.RcodeToString[resp.Rcode])
		}
		if resp := exchangeDNS(t, f.search, f.planner.Addr(), network, "example.com."); resp.Rcode != mdns.RcodeRefused {
			t.Errorf("%s outside agent6.: %s", network, mdns.RcodeToString[resp.Rcode])
		}
	}
	st, ok := f.planner.DNSStats()
	if !ok || st.Answered != 6 || st.NXDomain != 2 || st.Refused != 2 {
		t.Errorf("planner DNS stats = %+v, %v", st, ok)
	}
}

// A node that disables DNS leaves port 53 to the application.
func TestDisableDNS(t *testing.T) {
	o := newOrg(t, "example.org")
	k, der := o.issue(t, "quiet", time.Hour)
	n := &node.Node{Key: k, Credential: der, Bundle: o.bundle, DisableDNS: true,
		Endpoints: []netip.AddrPort{netip.AddrPortFrom(loopback, 0)}}
	if err := n.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if _, ok := n.DNSStats(); ok {
		t.Fatal("DNS served with DisableDNS")
	}
	pc, err := n.ListenPacket("udp", ":53")
	if err != nil {
		t.Fatalf("port 53 not free: %v", err)
	}
	pc.Close()
}

// Close stops the DNS server with the node: no goroutine outlives it.
func TestDNSLifecycle(t *testing.T) {
	defer verifyNoLeaks(t, goleak.IgnoreCurrent())
	o := &org{}
	o.ca, _ = identity.NewCA("example.org", time.Hour, time.Now())
	o.bundle, _ = identity.ParseBundle(o.ca.CertificatePEM())
	start := func(name string, join ...string) *node.Node {
		k, der := o.issue(t, name, time.Hour)
		n := &node.Node{Key: k, Credential: der, Bundle: o.bundle, Join: join, TuneGossip: fastGossip,
			Endpoints: []netip.AddrPort{netip.AddrPortFrom(loopback, 0)}}
		if err := n.Up(context.Background()); err != nil {
			t.Fatal(err)
		}
		return n
	}
	a := start("a")
	b := start("b", invite(t, a))
	waitFor(t, 20*time.Second, "pair", func() bool { return fullMesh([]*node.Node{a, b}) })
	// A TCP connection left open: Close must end it too.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := b.Dial(ctx, "tcp", netip.AddrPortFrom(a.Addr(), 53).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := aaaa(exchangeDNS(t, b, a.Addr(), "udp", "b.example.org.agent6.")); len(got) != 1 || got[0] != b.Addr() {
		t.Fatalf("b asks a for b: %v", got)
	}
	for _, n := range []*node.Node{b, a} {
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
