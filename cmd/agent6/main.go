// Command agent6 is the Agent6 node and its tools: key and address
// utilities, the sidecar (`agent6 up`) and clients of its LocalAPI.
// It only parses flags; the work is in the library packages.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
)

type command struct {
	summary string
	run     func(args []string, stdout io.Writer) error
}

var commands = map[string]command{
	"keygen":   {"write a new agent key (PKCS#8 Ed25519 PEM)", runKeygen},
	"pubkey":   {"print the WireGuard public key of an agent key", runPubkey},
	"addr":     {"print the Agent6 address of an agent key or WireGuard key", runAddr},
	"up":       {"run the sidecar (kernel TUN + LocalAPI) until SIGINT/SIGTERM", runUp},
	"status":   {"show this node and its peers (from the LocalAPI)", runStatus},
	"peers":    {"list the agents known through membership", runPeers},
	"whois":    {"say who holds an overlay address (from the LocalAPI)", runWhois},
	"discover": {"find agents by skill, tag, name, trust domain or group, with the policy decision", runDiscover},
	"invite":   {"print a join token for this node", runInvite},
	"revoke":   {"hand a revocation to the node, which applies and gossips it", runRevoke},
	"task":     {"tasks with their own addresses: start, end, list", runTask},
	"ca":       {"organisation CA: init, issue, revoke", runCA},
	"capture":  {"write a pcap of the overlay packets entering and leaving WireGuard", runCapture},
}

// errUsage marks errors that are the caller's invocation, exit status 2.
var errUsage = errors.New("usage")

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: agent6 <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "  %-9s %s\n", name, commands[name].summary)
	}
	fmt.Fprintln(w, "\nRun 'agent6 <command> -h' for a command's flags.")
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage(os.Stderr)
		os.Exit(2)
	}
	cmd, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "agent6: unknown command %q\n\n", os.Args[1])
		usage(os.Stderr)
		os.Exit(2)
	}
	if err := cmd.run(os.Args[2:], os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		if errors.Is(err, errUsage) {
			fmt.Fprintf(os.Stderr, "agent6 %s: %v\n", os.Args[1], err)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "agent6 %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// newFlags returns a flag set for a subcommand that reports errors rather
// than exiting.
func newFlags(name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet("agent6 "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: agent6 %s %s\n", name, args)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args, refusing positional arguments.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return nil
}
