// Quickstart: two agents embedded in one process, no root. Each gets an
// IPv6 address derived from its own key; the planner calls the tool over
// HTTP across the WireGuard overlay, and each side asks the network who is
// on the other end.
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/agent6/agent6/node"
)

func main() {
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Two agents, each with a fresh key and a private userspace stack.
	planner, tool := &node.Node{}, &node.Node{}
	for _, n := range []*node.Node{planner, tool} {
		if err := n.Up(ctx); err != nil {
			return err
		}
		defer n.Close()
	}
	fmt.Fprintf(out, "planner  %s  key %s\n", planner.Addr(), planner.PublicKey())
	fmt.Fprintf(out, "tool     %s  key %s\n", tool.Addr(), tool.PublicKey())

	// Static peers over loopback UDP; membership (a later step) does this.
	toolPort, _ := tool.UDPPort()
	plannerPort, _ := planner.UDPPort()
	loopback := netip.MustParseAddr("127.0.0.1")
	if err := planner.AddPeer(node.Peer{PublicKey: tool.PublicKey(), Endpoint: netip.AddrPortFrom(loopback, toolPort)}); err != nil {
		return err
	}
	if err := tool.AddPeer(node.Peer{PublicKey: planner.PublicKey(), Endpoint: netip.AddrPortFrom(loopback, plannerPort)}); err != nil {
		return err
	}

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
		fmt.Fprintf(out, "tool:    request from %s  key %s\n", caller.Addr, caller.PublicKey)
		fmt.Fprintf(w, "hello %s, this is the tool\n", caller.Addr)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	// The planner calls the tool by its address.
	client := &http.Client{Transport: &http.Transport{DialContext: planner.Dial}}
	resp, err := client.Get("http://[" + tool.Addr().String() + "]/")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	callee, err := planner.WhoIs(tool.Addr())
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("quickstart: tool answered %s: %s", resp.Status, body)
	}
	fmt.Fprintf(out, "planner: reply from %s  key %s: %s", callee.Addr, callee.PublicKey, body)
	return nil
}

func whoIs(n *node.Node, remote string) (node.WhoIsResult, error) {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return node.WhoIsResult{}, err
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return node.WhoIsResult{}, err
	}
	return n.WhoIs(addr)
}
