package main

import (
	"context"
	"fmt"
	"io"
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
	fmt.Fprintf(stdout, "address     %s\npublic key  %s\nlisten port %d\nmode        %s", st.Addr, st.PublicKey, st.ListenPort, st.Mode)
	if st.TUN != "" {
		fmt.Fprintf(stdout, " (%s)", st.TUN)
	}
	if m := st.Membership; m != nil {
		fmt.Fprintf(stdout, "\nidentity    %s\nmembers     %d admitted, joined=%v, trusting %s", m.SPIFFEID, m.Members, m.Joined, strings.Join(m.TrustDomains, ", "))
		if len(m.Refused) > 0 {
			fmt.Fprintf(stdout, ", refused %v", m.Refused)
		}
	}
	f := st.Filter
	fmt.Fprintf(stdout, "\nfilter      in %d pkts / %d B, out %d pkts / %d B, %d flows, drops %v", f.InPackets, f.InBytes, f.OutPackets, f.OutBytes, f.ActiveFlows, f.Drops)
	if f.Forwarded > 0 || f.TransitFlows > 0 {
		fmt.Fprintf(stdout, "\nwaypoint    forwarded %d pkts / %d B, %d flows now", f.Forwarded, f.ForwardedBytes, f.TransitFlows)
	}
	if f.ICMPErrors > 0 || f.ICMPLimited > 0 {
		fmt.Fprintf(stdout, "\nicmp        %d errors to the local stack (%d rate-limited)", f.ICMPErrors, f.ICMPLimited)
	}
	if h := st.Handshakes; h != (node.HandshakeStatus{}) {
		fmt.Fprintf(stdout, "\nhandshakes  crossed: %d held (%d answered, %d released), ours %d superseded, %d sent late; %d redelivered",
			h.CrossHeld, h.CrossAnswered, h.CrossReleased, h.CrossSuperseded, h.CrossSentLate, h.Redelivered)
	}
	if ns := st.Netstack; ns != nil {
		fmt.Fprintf(stdout, "\nnetstack    UDP receive buffer drops %d, to no socket %d; TCP retransmits %d", ns.UDPReceiveBufferDrops, ns.UDPUnknownPort, ns.TCPRetransmits)
	}
	fmt.Fprint(stdout, "\n\n")
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER ADDRESS\tPUBLIC KEY\tENDPOINT\tLAST HANDSHAKE\tRX\tTX")
	for _, p := range st.Peers {
		hs := "never"
		if p.LastHandshake != nil {
			hs = time.Since(*p.LastHandshake).Round(time.Second).String() + " ago"
		}
		ep := "-"
		if p.Endpoint.IsValid() {
			ep = p.Endpoint.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\n", p.Addr, p.PublicKey, ep, hs, p.RxBytes, p.TxBytes)
	}
	return tw.Flush()
}
