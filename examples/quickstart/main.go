// Quickstart: two AI agents of one organisation, embedded in one process,
// no root. Each gets an IPv6 address derived from its own key and a
// credential from the organisation's CA. The tool agent publishes a card
// with a "web-search" skill; the planner joins through the tool's token,
// discovers the tool by skill (with the authorization decision for
// itself), starts a task — a delegated identity with its own address — and
// calls the tool over HTTP from the task's address. The tool asks the
// network who is calling, and learns agent, organisation and task.
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/card"
)

func main() {
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// agent starts an embedded node with a fresh key and a credential for it.
func agent(ctx context.Context, ca *identity.CA, bundle *identity.Bundle, name string, c *card.Card, join ...string) (*node.Node, error) {
	key, err := identity.GeneratePrivateKey()
	if err != nil {
		return nil, err
	}
	cred, err := ca.Issue(identity.IssueRequest{Key: key.Public(), Name: name, Groups: []string{"demo"}}, time.Now())
	if err != nil {
		return nil, err
	}
	n := &node.Node{
		Key: key, Credential: cred, Bundle: bundle, Card: c, Join: join,
		// Both agents live in this process: advertise loopback.
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
	}
	return n, n.Up(ctx)
}

func run(out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The organisation: one CA for the trust domain example.org.
	ca, err := identity.NewCA("example.org", 24*time.Hour, time.Now())
	if err != nil {
		return err
	}
	bundle, err := identity.ParseBundle(ca.CertificatePEM())
	if err != nil {
		return err
	}

	toolCard := &card.Card{Name: "search-tool", Description: "searches the web", Version: "1.0",
		Skills: []card.Skill{{ID: "web-search", Name: "Web search", Tags: []string{"search", "web"}}}}
	tool, err := agent(ctx, ca, bundle, "tool", toolCard)
	if err != nil {
		return err
	}
	defer tool.Close()
	token, err := tool.Invite()
	if err != nil {
		return err
	}
	planner, err := agent(ctx, ca, bundle, "planner", &card.Card{Name: "planner"}, token)
	if err != nil {
		return err
	}
	defer planner.Close()
	fmt.Fprintf(out, "tool     %s  spiffe://example.org/agent/tool\n", tool.Addr())
	fmt.Fprintf(out, "planner  %s  spiffe://example.org/agent/planner  (joined with %s)\n", planner.Addr(), token)

	// The tool serves HTTP on its overlay address and asks who called.
	ln, err := tool.Listen("tcp", ":80")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller, err := whoIs(tool, r.RemoteAddr)
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		fmt.Fprintf(out, "tool:    request from %s\n", caller.Addr)
		fmt.Fprintf(out, "         agent %s (trust domain %s, groups %v)\n", caller.ID, caller.TrustDomain, caller.Groups)
		if t := caller.Task; t != nil {
			fmt.Fprintf(out, "         task class=%s sensitivity=%s pseudonym=%s depth=%d expires=%s\n",
				t.Class, t.Sensitivity, t.Pseudonym, t.Depth, t.Expires.Format(time.RFC3339))
		}
		fmt.Fprintf(w, "results for %q\n", r.URL.Query().Get("q"))
	})}
	go srv.Serve(ln)
	defer srv.Close()

	// The planner finds the tool by what it can do, and learns whether it
	// may call it.
	<-planner.Joined()
	var found []node.Discovery
	for found == nil {
		if found, err = planner.Discover(ctx, node.Query{Skill: "web-search"}); err != nil {
			return err
		}
		if len(found) == 0 {
			found = nil
			select {
			case <-ctx.Done():
				return fmt.Errorf("quickstart: the tool was not discovered: %w", ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	d := found[0]
	fmt.Fprintf(out, "planner: discovered %q at %s (%s), decision: allow=%v (%s)\n", d.Card.Name, d.Addr, d.ID, d.Decision.Allow, d.Decision.Reason)
	if !d.Decision.Allow {
		return fmt.Errorf("quickstart: not allowed to call the tool: %s", d.Decision.Reason)
	}

	// A task: its own key and address, signed for by the planner.
	task, err := planner.StartTask(ctx, node.TaskSpec{ID: "trip-to-lisbon", Class: "tool-call", Sensitivity: "low", TTL: 10 * time.Minute})
	if err != nil {
		return err
	}
	defer task.End()
	fmt.Fprintf(out, "planner: started task %s (pseudonym %s)\n", task.Addr(), task.Pseudonym())

	client := &http.Client{Transport: &http.Transport{DialContext: task.Dial}}
	resp, err := client.Get("http://[" + d.Addr.String() + "]/search?q=lisbon")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("quickstart: tool answered %s: %s", resp.Status, body)
	}
	fmt.Fprintf(out, "planner: reply from %s: %s", d.Addr, body)
	return nil
}

func whoIs(n *node.Node, remote string) (node.WhoIsResult, error) {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return node.WhoIsResult{}, err
	}
	return n.WhoIs(ap.Addr())
}
