package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/agent6/agent6/node"
)

func runWhois(args []string, stdout io.Writer) error {
	fs := newFlags("whois", "ADDR [--json] [--socket PATH]")
	asJSON := fs.Bool("json", false, "print JSON")
	socket := socketFlag(fs)
	arg, err := parseOne(fs, args, "ADDR")
	if err != nil {
		return err
	}
	addr, err := netip.ParseAddr(arg)
	if err != nil {
		return fmt.Errorf("%w: %q is not an IP address", errUsage, arg)
	}
	c, ctx, cancel := client(*socket)
	defer cancel()
	who, err := c.WhoIs(ctx, addr)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, who)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "address\t%s\n", who.Addr)
	fmt.Fprintf(tw, "public key\t%s\n", who.PublicKey)
	if who.Self {
		fmt.Fprintf(tw, "self\tyes (this node)\n")
	}
	if who.ID != "" {
		fmt.Fprintf(tw, "spiffe id\t%s\n", who.ID)
		fmt.Fprintf(tw, "trust domain\t%s\n", who.TrustDomain)
		fmt.Fprintf(tw, "groups\t%s\n", dash(who.Groups))
		fmt.Fprintf(tw, "roles\t%s\n", dash(who.Roles))
		fmt.Fprintf(tw, "state\t%s\n", who.State)
	} else {
		fmt.Fprintf(tw, "identity\tunknown (a static WireGuard peer, not known through membership)\n")
	}
	if t := who.Task; t != nil {
		parents := make([]string, len(t.Parents))
		for i, p := range t.Parents {
			parents[i] = p.String()
		}
		fmt.Fprintf(tw, "task\tclass %s, sensitivity %s, depth %d\n", orDash(t.Class), orDash(t.Sensitivity), t.Depth)
		fmt.Fprintf(tw, "task pseudonym\t%s\n", t.Pseudonym)
		fmt.Fprintf(tw, "delegated by\t%s\n", strings.Join(parents, " → "))
		fmt.Fprintf(tw, "task expires\t%s\n", t.Expires.Format(time.RFC3339))
	}
	return tw.Flush()
}

func runDiscover(args []string, stdout io.Writer) error {
	fs := newFlags("discover", "[--skill S] [--tag T] [--name N] [--trust-domain D] [--group G] [--json] [--socket PATH]")
	var q node.Query
	fs.StringVar(&q.Skill, "skill", "", "only agents whose card lists this skill id")
	fs.StringVar(&q.Tag, "tag", "", "only agents with a skill carrying this tag")
	fs.StringVar(&q.Name, "name", "", "only agents of this name (SPIFFE ID or card)")
	fs.StringVar(&q.TrustDomain, "trust-domain", "", "only agents of this trust domain")
	fs.StringVar(&q.Group, "group", "", "only agents in this group")
	asJSON := fs.Bool("json", false, "print JSON")
	socket := socketFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	c, ctx, cancel := client(*socket)
	defer cancel()
	found, err := c.Discover(ctx, q)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, found)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tSPIFFE ID\tCARD\tSKILLS\tDECISION")
	for _, d := range found {
		name, skills := "-", "-"
		if d.Card != nil {
			name = d.Card.Name
			ids := make([]string, 0, len(d.Card.Skills))
			for _, s := range d.Card.Skills {
				ids = append(ids, s.ID)
			}
			skills = dash(ids)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.Addr, d.ID, name, skills, decision(d.Decision))
	}
	return tw.Flush()
}

func decision(d node.Decision) string {
	if d.Allow {
		return "allow"
	}
	return "deny: " + d.Reason
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// parseOne parses args holding exactly one positional argument, which may
// come before, between or after the flags.
func parseOne(fs *flag.FlagSet, args []string, what string) (string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return "", err
			}
			return "", fmt.Errorf("%w: %v", errUsage, err)
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	switch len(pos) {
	case 0:
		return "", fmt.Errorf("%w: %s is required", errUsage, what)
	case 1:
		return strings.TrimSpace(pos[0]), nil
	}
	return "", fmt.Errorf("%w: one %s, not %d", errUsage, what, len(pos))
}
