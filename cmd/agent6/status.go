package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/localapi"
)

func runStatus(args []string, stdout io.Writer) error {
	fs := newFlags("status", "[--json] [--socket PATH]")
	asJSON := fs.Bool("json", false, "print JSON")
	socket := socketFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := (&localapi.Client{Socket: *socket}).Status(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, st)
	}
	return writeStatus(stdout, st, time.Now())
}

// writeStatus prints st as text: one labelled line per part, then a
// table of the WireGuard peers. It shows everything the JSON has.
func writeStatus(w io.Writer, st node.Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	line := func(label, format string, args ...any) { fmt.Fprintf(tw, label+"\t"+format+"\n", args...) }
	line("address", "%s", st.Addr)
	line("public key", "%s (WireGuard)", st.PublicKey)
	line("agent key", "%s (Ed25519)", st.AgentKey)
	line("listen port", "%d/udp", st.ListenPort)
	if st.TUN != "" {
		line("mode", "%s (%s)", st.Mode, st.TUN)
	} else {
		line("mode", "%s", st.Mode)
	}
	if m := st.Membership; m != nil {
		line("identity", "%s (trust domain %s)", m.SPIFFEID, m.TrustDomain)
		line("trusting", "%s", strings.Join(m.TrustDomains, ", "))
		joined := "joined"
		if !m.Joined {
			joined = "not joined yet"
		}
		line("members", "%d admitted, %s", m.Members, joined)
		line("refused", "%s", counts(m.Refused))
		line("catch-ups", "%d", m.CatchUps)
		line("kept alive", "%d declared dead by gossip but still heard from over WireGuard", m.DeathsOverruled)
		if r := m.Revoked; r != nil {
			line("REVOKED", "this node's credential (serial %s) was revoked at %s; peers refuse it", r.Serial, r.RevokedAt.Format(time.RFC3339))
		}
	} else {
		line("membership", "none (static peers only)")
	}
	f := st.Filter
	line("filter", "in %d packets / %d B, out %d packets / %d B; %d flows, %d untracked, %d held",
		f.InPackets, f.InBytes, f.OutPackets, f.OutBytes, f.ActiveFlows, f.Untracked, f.Held)
	line("drops", "%s", counts(f.Drops))
	if f.Forwarded > 0 || f.TransitFlows > 0 {
		line("waypoint", "forwarded %d packets / %d B, %d flows now", f.Forwarded, f.ForwardedBytes, f.TransitFlows)
	}
	if f.ICMPErrors > 0 || f.ICMPLimited > 0 {
		line("icmp", "%d errors to the local stack, %d not sent (rate limit)", f.ICMPErrors, f.ICMPLimited)
	}
	h := st.Handshakes
	line("handshakes", "crossed: %d held (%d answered, %d released), ours %d superseded, %d sent late; %d redelivered",
		h.CrossHeld, h.CrossAnswered, h.CrossReleased, h.CrossSuperseded, h.CrossSentLate, h.Redelivered)
	if ns := st.Netstack; ns != nil {
		line("netstack", "UDP receive buffer drops %d, to no socket %d; TCP retransmits %d", ns.UDPReceiveBufferDrops, ns.UDPUnknownPort, ns.TCPRetransmits)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER ADDRESS\tPUBLIC KEY\tENDPOINT\tLAST HANDSHAKE\tRX\tTX")
	for _, p := range st.Peers {
		hs := "never"
		if p.LastHandshake != nil {
			hs = now.Sub(*p.LastHandshake).Round(time.Second).String() + " ago"
		}
		ep := "-"
		if p.Endpoint.IsValid() {
			ep = p.Endpoint.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d B\t%d B\n", p.Addr, p.PublicKey, ep, hs, p.RxBytes, p.TxBytes)
	}
	return tw.Flush()
}

// counts prints counters by name, sorted by name: "malformed 2,
// stale 1", or "none".
func counts(m map[string]uint64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if m[k] != 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
