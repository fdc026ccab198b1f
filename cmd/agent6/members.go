package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/config"
	"github.com/agent6/agent6/node/localapi"
)

// defaultSocket is where the commands that talk to the sidecar find it
// without --socket.
const defaultSocket = config.DefaultLocalAPI

// socketFlag adds --socket, the LocalAPI's unix socket, to fs: by default
// $AGENT6_SOCKET, or defaultSocket.
func socketFlag(fs *flag.FlagSet) *string {
	def := os.Getenv("AGENT6_SOCKET")
	if def == "" {
		def = defaultSocket
	}
	return fs.String("socket", def, "LocalAPI unix socket; $AGENT6_SOCKET sets the default")
}

func client(socket string) (*localapi.Client, context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	return &localapi.Client{Socket: socket}, ctx, cancel
}

func runInvite(args []string, stdout io.Writer) error {
	fs := newFlags("invite", "[--socket PATH]")
	socket := socketFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	c, ctx, cancel := client(*socket)
	defer cancel()
	tok, err := c.Invite(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

func runPeers(args []string, stdout io.Writer) error {
	fs := newFlags("peers", "[--json] [--socket PATH]")
	asJSON := fs.Bool("json", false, "print JSON")
	socket := socketFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	c, ctx, cancel := client(*socket)
	defer cancel()
	members, err := c.Peers(ctx)
	if err != nil {
		return err
	}
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		// Each member, with its WireGuard endpoint and last handshake.
		type row struct {
			localapiMember
			LastHandshake *time.Time `json:"last_handshake,omitempty"`
		}
		out := make([]row, 0, len(members))
		for _, m := range members {
			r := row{localapiMember: m}
			for _, p := range st.Peers {
				if p.Addr == m.Addr {
					r.LastHandshake = p.LastHandshake
				}
			}
			out = append(out, r)
		}
		return writeJSON(stdout, out)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tSPIFFE ID\tGROUPS\tROLES\tSTATE\tENDPOINT\tLAST HANDSHAKE")
	for _, m := range members {
		hs := "never"
		for _, p := range st.Peers {
			if p.Addr == m.Addr && p.LastHandshake != nil {
				hs = time.Since(*p.LastHandshake).Round(time.Second).String() + " ago"
			}
		}
		ep := "-"
		if m.Endpoint.IsValid() {
			ep = m.Endpoint.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Addr, m.ID, dash(m.Groups), dash(m.Roles), m.State, ep, hs)
	}
	return tw.Flush()
}

type localapiMember = node.Member

func dash(ss []string) string {
	if len(ss) == 0 {
		return "-"
	}
	return strings.Join(ss, ",")
}

func runRevoke(args []string, stdout io.Writer) error {
	fs := newFlags("revoke", "--file REVOCATION [--socket PATH]")
	file := fs.String("file", "", "revocation from `agent6 ca revoke`")
	socket := socketFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if *file == "" {
		return fmt.Errorf("%w: --file is required", errUsage)
	}
	body, err := os.ReadFile(*file)
	if err != nil {
		return err
	}
	c, ctx, cancel := client(*socket)
	defer cancel()
	res, err := c.Revoke(ctx, body)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revoked %s (serial %s); gossip spreads it to every node\n", res.ID, res.Serial)
	return nil
}
