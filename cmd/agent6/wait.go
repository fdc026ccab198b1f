package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/localapi"
)

// runWait waits until the sidecar answers on its socket and, with
// --peers N, until it has joined (if it has join tokens) and has N peers:
// admitted agents with membership, configured WireGuard peers without.
func runWait(args []string, stdout io.Writer) error {
	fs := newFlags("wait", "[--peers N] [--timeout D] [--socket PATH]")
	peers := fs.Int("peers", 0, "also wait until the node has joined (with join tokens) and has this many peers")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long (exit status 1)")
	socket := socketFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if *peers < 0 || *timeout <= 0 {
		return fmt.Errorf("%w: --peers must not be negative and --timeout must be positive", errUsage)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	c := &localapi.Client{Socket: *socket}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	why := "no answer yet"
	for {
		st, err := c.Status(ctx)
		switch {
		case err != nil && ctx.Err() != nil: // cut by the deadline: the last reason stands
		case err != nil:
			why = err.Error()
		default:
			if why = notReady(st, *peers); why == "" {
				fmt.Fprintf(stdout, "ready: %s%s\n", st.Addr, peerSummary(st))
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %v: %s", *timeout, why)
		case <-tick.C:
		}
	}
}

// notReady says what st lacks for want peers, or "" when nothing.
func notReady(st node.Status, want int) string {
	if want == 0 {
		return ""
	}
	m := st.Membership
	switch {
	case m == nil && len(st.Peers) < want:
		return fmt.Sprintf("%d of %d peers configured", len(st.Peers), want)
	case m == nil:
		return ""
	case !m.Joined:
		return "not joined yet"
	case m.Members < want:
		return fmt.Sprintf("%d of %d peers admitted", m.Members, want)
	}
	return ""
}

func peerSummary(st node.Status) string {
	if m := st.Membership; m != nil {
		return fmt.Sprintf(", %d peers admitted, joined=%v", m.Members, m.Joined)
	}
	return fmt.Sprintf(", %d static peers", len(st.Peers))
}
