package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/card"
	"github.com/agent6/agent6/node/localapi"
)

// embedded starts two embedded nodes of example.org, the second with a
// card, and serves the first's LocalAPI; it returns the socket and nodes.
func embedded(t *testing.T) (sock string, self, tool *node.Node) {
	t.Helper()
	ca, err := identity.NewCA("example.org", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	bundle, _ := identity.ParseBundle(ca.CertificatePEM())
	mk := func(name string, c *card.Card, join ...string) *node.Node {
		k, _ := identity.GeneratePrivateKey()
		der, err := ca.Issue(identity.IssueRequest{Key: k.Public(), Name: name, Groups: []string{"tools"}}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		n := &node.Node{Key: k, Credential: der, Bundle: bundle, Card: c, Join: join,
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}}
		if err := n.Up(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	self = mk("planner", nil)
	tok, err := self.Invite()
	if err != nil {
		t.Fatal(err)
	}
	tool = mk("search", &card.Card{Name: "Web Search", Skills: []card.Skill{{ID: "web-search"}, {ID: "summarise"}}}, tok)
	sock = filepath.Join(t.TempDir(), "agent6.sock")
	ln, err := localapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { (&localapi.Server{Node: self}).Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(20 * time.Second)
	for {
		if found, _ := self.Discover(context.Background(), node.Query{}); len(found) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the tool was not admitted")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return sock, self, tool
}

func TestWhoisAndDiscoverCommands(t *testing.T) {
	sock, self, tool := embedded(t)
	run := func(f func([]string, io.Writer) error, args ...string) (string, error) {
		var out bytes.Buffer
		err := f(args, &out)
		return out.String(), err
	}

	out, err := run(runWhois, tool.Addr().String(), "--socket", sock)
	if err != nil || !strings.Contains(out, "spiffe://example.org/agent/search") || !strings.Contains(out, "tools") || !strings.Contains(out, "alive") {
		t.Fatalf("whois: %q %v", out, err)
	}
	out, err = run(runWhois, "--json", "--socket", sock, self.Addr().String())
	var who node.WhoIsResult
	if err != nil || json.Unmarshal([]byte(out), &who) != nil || !who.Self || who.ID != "spiffe://example.org/agent/planner" {
		t.Fatalf("whois --json: %q %v", out, err)
	}
	k, _ := identity.GeneratePrivateKey()
	if _, err = run(runWhois, "--socket", sock, k.WireGuard().Public().Addr().String()); err == nil || !strings.Contains(err.Error(), "not_found") {
		t.Fatalf("whois unknown: %v", err)
	}
	for _, args := range [][]string{{}, {"--socket", sock}, {"not-an-address"}, {"2001:21::1", "2001:21::2"}} {
		if _, err := run(runWhois, args...); !errors.Is(err, errUsage) {
			t.Errorf("whois %v: %v, want a usage error", args, err)
		}
	}

	out, err = run(runDiscover, "--skill", "summarise", "--socket", sock)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) != 2 || !strings.HasPrefix(lines[0], "ADDRESS") ||
		!strings.Contains(lines[1], tool.Addr().String()) || !strings.Contains(lines[1], "Web Search") ||
		!strings.Contains(lines[1], "web-search,summarise") || !strings.HasSuffix(lines[1], "allow") {
		t.Fatalf("discover: %q %v", out, err)
	}
	out, err = run(runDiscover, "--json", "--trust-domain", "example.org", "--group", "tools", "--name", "search", "--socket", sock)
	var found []node.Discovery
	if err != nil || json.Unmarshal([]byte(out), &found) != nil || len(found) != 1 || found[0].Addr != tool.Addr() || !found[0].Decision.Allow {
		t.Fatalf("discover --json: %q %v", out, err)
	}
	out, err = run(runDiscover, "--tag", "none", "--socket", sock)
	if err != nil || strings.TrimSpace(out) != "ADDRESS  SPIFFE ID  CARD  SKILLS  DECISION" {
		t.Fatalf("discover nothing: %q %v", out, err)
	}
	if _, err := run(runDiscover, "extra"); !errors.Is(err, errUsage) {
		t.Errorf("discover with an argument: %v", err)
	}
}

func TestDecisionText(t *testing.T) {
	if got := decision(node.Decision{Reason: "no rule allows crossing from a to b"}); got != "deny: no rule allows crossing from a to b" {
		t.Fatal(got)
	}
}
