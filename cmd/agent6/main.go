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
	"slices"
	"sort"
	"strings"
)

// command is one row of the command table, from which usage, help and
// shell completion are generated.
type command struct {
	summary string
	run     func(args []string, stdout io.Writer) error
	// sub are the subcommands (task, ca), which run dispatches to.
	sub map[string]command
}

var commands = map[string]command{
	"keygen":   {summary: "write a new agent key (PKCS#8 Ed25519 PEM)", run: runKeygen},
	"pubkey":   {summary: "print the WireGuard public key of an agent key", run: runPubkey},
	"addr":     {summary: "print the Agent6 address of an agent key or WireGuard key", run: runAddr},
	"up":       {summary: "run the sidecar (kernel TUN + LocalAPI) until SIGINT/SIGTERM", run: runUp},
	"wait":     {summary: "wait until the sidecar answers (and, with --peers, has joined and admitted peers)", run: runWait},
	"status":   {summary: "show this node and its peers (from the LocalAPI)", run: runStatus},
	"peers":    {summary: "list the agents known through membership", run: runPeers},
	"whois":    {summary: "say who holds an overlay address (from the LocalAPI)", run: runWhois},
	"discover": {summary: "find agents by skill, tag, name, trust domain or group, with the policy decision", run: runDiscover},
	"invite":   {summary: "print a join token for this node", run: runInvite},
	"revoke":   {summary: "hand a revocation to the node, which applies and gossips it", run: runRevoke},
	"task":     {summary: "tasks with their own addresses: start, end, list", run: runTask, sub: taskCommands},
	"ca":       {summary: "organisation CA: init, issue, revoke", run: runCA, sub: caCommands},
	"policy":   {summary: "policy documents, offline: sign, test, show, explain", run: runPolicy, sub: policyCommands},
	"audit":    {summary: "the verifiable audit log: vkey, verify (offline)", run: runAudit, sub: auditCommands},
	"capture":  {summary: "write a pcap of the overlay packets entering and leaving WireGuard", run: runCapture},
	"version":  {summary: "print the version and the source revision it was built from", run: runVersion},
}

// The commands that read the table itself join it here, which a
// composite literal cannot refer to.
func init() {
	commands["help"] = command{summary: "show the commands, or a command's flags: help COMMAND [SUBCOMMAND]", run: runHelp}
	commands["completion"] = command{summary: "print a shell completion script: completion bash|zsh", run: runCompletion}
}

// errUsage marks errors that are the caller's invocation, exit status 2.
var errUsage = errors.New("usage")

// names returns the table's command names, sorted.
func names(table map[string]command) []string {
	out := make([]string, 0, len(table))
	for name := range table {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: agent6 <command> [flags]\n\ncommands:")
	for _, name := range names(commands) {
		fmt.Fprintf(w, "  %-10s %s\n", name, commands[name].summary)
	}
	fmt.Fprintln(w, "\nRun 'agent6 help <command>' for a command's flags. The commands that talk to")
	fmt.Fprintln(w, "the sidecar take --socket, default $AGENT6_SOCKET or "+defaultSocket+".")
}

func main() {
	if len(os.Args) < 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	name, args := os.Args[1], os.Args[2:]
	switch name {
	case "-h", "-help", "--help":
		name = "help"
	case "-version", "--version":
		name = "version"
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "agent6: unknown command %q\n\n", name)
		usage(os.Stderr)
		os.Exit(2)
	}
	if err := cmd.run(args, os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "agent6 %s: %v\n", name, err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// runHelp prints the command list, or a command's flags, to stdout.
func runHelp(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		usage(stdout)
		return nil
	}
	cmd, ok := commands[args[0]]
	if !ok {
		return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
	}
	path := []string{args[0]}
	if len(args) > 1 && cmd.sub != nil {
		if cmd, ok = cmd.sub[args[1]]; !ok {
			return fmt.Errorf("%w: unknown subcommand %q of %s", errUsage, args[1], args[0])
		}
		path = append(path, args[1])
	}
	if cmd.sub != nil {
		subUsage(stdout, path[0], cmd.sub)
		return nil
	}
	fs := flagsOf(path...)
	if fs == nil { // a command without flags (help, completion, version)
		fmt.Fprintf(stdout, "usage: agent6 %s\n\n%s\n", path[0], cmd.summary)
		return nil
	}
	fs.SetOutput(stdout)
	fs.Usage()
	return nil
}

// subUsage prints the subcommands of name.
func subUsage(w io.Writer, name string, subs map[string]command) {
	fmt.Fprintf(w, "usage: agent6 %s <subcommand> [flags]\n\nsubcommands:\n", name)
	for _, s := range names(subs) {
		fmt.Fprintf(w, "  %-7s %s\n", s, subs[s].summary)
	}
	fmt.Fprintf(w, "\nRun 'agent6 help %s <subcommand>' for its flags.\n", name)
}

// dispatch runs the subcommand of name that args start with.
func dispatch(name string, subs map[string]command, args []string, stdout io.Writer) error {
	want := strings.Join(names(subs), ", ")
	if len(args) == 0 {
		return fmt.Errorf("%w: missing subcommand (%s)", errUsage, want)
	}
	if slices.Contains([]string{"-h", "-help", "--help", "help"}, args[0]) {
		subUsage(os.Stderr, name, subs)
		return flag.ErrHelp
	}
	sub, ok := subs[args[0]]
	if !ok {
		return fmt.Errorf("%w: unknown subcommand %q (want %s)", errUsage, args[0], want)
	}
	return sub.run(args[1:], stdout)
}

// flagSink, when set, receives each flag set newFlags makes, which then
// prints nothing: flagsOf runs a command with -h to learn its flags.
var flagSink func(*flag.FlagSet)

// flagsOf returns the flags of the command at path ("up", or "task",
// "start"), nil for a command without a flag set. The command runs with
// -h, which every command parses before it does anything.
func flagsOf(path ...string) *flag.FlagSet {
	cmd := commands[path[0]]
	if len(path) > 1 {
		cmd = cmd.sub[path[1]]
	}
	if cmd.run == nil || cmd.sub != nil {
		return nil
	}
	switch path[0] {
	case "help", "completion", "version": // they read no flags
		return nil
	}
	var fs *flag.FlagSet
	flagSink = func(f *flag.FlagSet) { fs = f }
	defer func() { flagSink = nil }()
	cmd.run([]string{"-h"}, io.Discard)
	return fs
}

// newFlags returns a flag set for a subcommand that reports errors rather
// than exiting.
func newFlags(name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet("agent6 "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: agent6 %s %s\n", name, args)
		fs.PrintDefaults()
	}
	if flagSink != nil {
		fs.SetOutput(io.Discard)
		flagSink(fs)
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
