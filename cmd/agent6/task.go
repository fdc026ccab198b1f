package main

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/agent6/agent6/node/localapi"
)

var taskCommands = map[string]command{
	"start": {summary: "start a task (a delegated identity with its own address); prints its id and address", run: runTaskStart},
	"end":   {summary: "end a task by id: its address goes away and the peers that knew it are told", run: runTaskEnd},
	"list":  {summary: "list the running tasks", run: runTaskList},
}

func runTask(args []string, stdout io.Writer) error {
	return dispatch("task", taskCommands, args, stdout)
}

func runTaskStart(args []string, stdout io.Writer) error {
	fs := newFlags("task start", "--class C [--sensitivity S] [--scope S]... [--ttl D] [--parent ID] [--id NAME] [--json] [--socket PATH]")
	var req localapi.TaskRequest
	var scope stringList
	fs.StringVar(&req.Class, "class", "", "the task's class, e.g. tool-call or retrieval")
	fs.StringVar(&req.Sensitivity, "sensitivity", "", "the data it handles, e.g. low or pii")
	fs.Var(&scope, "scope", "what the task may reach (repeatable)")
	fs.DurationVar(&req.TTL, "ttl", 0, "how long the task lives (default: one hour, cut to the node's credential or the parent task; longer than those is refused)")
	fs.StringVar(&req.Parent, "parent", "", "id of a running task: start a sub-agent of it")
	fs.StringVar(&req.ID, "id", "", "your own name for the task; it never leaves the node (default: random)")
	asJSON := fs.Bool("json", false, "print JSON")
	socket := socketFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if req.Class == "" {
		return fmt.Errorf("%w: --class is required", errUsage)
	}
	if req.TTL < 0 {
		return fmt.Errorf("%w: --ttl must not be negative", errUsage)
	}
	req.Scope = scope
	c, ctx, cancel := client(*socket)
	defer cancel()
	t, err := c.StartTask(ctx, req)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, t)
	}
	fmt.Fprintln(stdout, t.ID, t.Addr)
	return nil
}

func runTaskEnd(args []string, stdout io.Writer) error {
	fs := newFlags("task end", "ID [--socket PATH]")
	socket := socketFlag(fs)
	id, err := parseOne(fs, args, "ID")
	if err != nil {
		return err
	}
	c, ctx, cancel := client(*socket)
	defer cancel()
	return c.EndTask(ctx, id)
}

func runTaskList(args []string, stdout io.Writer) error {
	fs := newFlags("task list", "[--json] [--socket PATH]")
	asJSON := fs.Bool("json", false, "print JSON")
	socket := socketFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	c, ctx, cancel := client(*socket)
	defer cancel()
	tasks, err := c.Tasks(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, tasks)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDRESS\tCLASS\tSENSITIVITY\tDEPTH\tEXPIRES\tPARENT\tUID")
	ids := make(map[netip.Addr]string, len(tasks))
	for _, t := range tasks {
		ids[t.Addr] = t.ID
	}
	for _, t := range tasks {
		parent := "-" // the agent itself
		if len(t.Parents) > 1 {
			p := t.Parents[len(t.Parents)-1]
			if parent = ids[p]; parent == "" {
				parent = p.String()
			}
		}
		uid := "-" // started by the node's own program
		if t.UID != nil {
			uid = strconv.FormatUint(uint64(*t.UID), 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\tin %s\t%s\t%s\n", t.ID, t.Addr, orDash(t.Class), orDash(t.Sensitivity), t.Depth,
			time.Until(t.Expires).Round(time.Second), parent, uid)
	}
	return tw.Flush()
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
