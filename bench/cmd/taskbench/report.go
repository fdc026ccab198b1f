package main

import (
	"github.com/agent6/agent6/bench/internal/report"

	"bytes"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/agent6/agent6/bench/smallflow"
	"github.com/agent6/agent6/bench/taskbench"
)

// sectionTitle starts taskbench's section of the results file.
const sectionTitle = "# Agent6 task benchmark"

// report renders the results as a Markdown section.
func (r *results) report() string {
	c := r.cfg
	var w bytes.Buffer
	fmt.Fprintf(&w, "%s\n\n", sectionTitle)
	fmt.Fprintf(&w, "- Date: %s\n", r.start.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&w, "- Command: %s\n", report.Command())
	fmt.Fprintf(&w, "- Machine: %d CPUs (`nproc`), %s, kernel %s\n", runtime.NumCPU(), report.CPUModel(), report.Kernel())
	fmt.Fprintf(&w, "- Load average (1, 5, 15 min) at start: %s; at end: %s; the run took %.0f s\n", r.loadStart, r.loadEnd, r.wall.Seconds())
	fmt.Fprintf(&w, "- Software: %s, agent6 %s\n\n", runtime.Version(), report.Agent6Version())

	fmt.Fprintf(&w, "Two embedded nodes in this one process (`node.Node` with a gVisor netstack and a wireguard-go device each, "+
		"UDP on 127.0.0.1, memberlist's LAN timing), one CA: A starts tasks and dials, B serves. The WireGuard session "+
		"between them is up before anything is measured. *agent* is a connection from A's own address (`A.Dial`), "+
		"*task* one from a task's address (`task.Dial`).\n\n")
	warm := ""
	if c.warmup > 0 {
		warm = fmt.Sprintf(", after an unmeasured %v run from each source (a fresh netstack is faster for the first tens of "+
			"thousands of connections, until the server's TIME_WAIT state builds up)", c.warmup)
	}
	fmt.Fprintf(&w, "*First byte*: %d iterations, one at a time, each a task call and an agent call in alternating order. "+
		"Task call: from just before `A.StartTask` (a new task, so B has never seen it) to the first byte of B's greeting "+
		"(B writes `hello` on accept) at a connection dialled from the task; the task's SYN is held at A until B has "+
		"acknowledged the delegation (one round trip), then released; the task is ended after the call. Agent call: "+
		"from just before `A.Dial` to the first byte of the greeting. "+
		"*WhoIs*: %d calls of `B.WhoIs` for each address, alternating, each timed alone (with the clock reads), "+
		"for A's address and for that of a task B accepted. "+
		"*Small flows*: as `smallflow` (new TCP connection per request, %d B request, %d B reply, server closes), "+
		"%d in flight for %v, %d runs per source, alternating (agent first in even runs, task first in odd ones)%s, "+
		"from A's address and from one task's address (started, and its delegation delivered, before); every connection's "+
		"source address is checked. `A.Dial` does not bind A's address in embedded mode, so gVisor picks the source by "+
		"longest matching prefix (RFC 6724 rule 8) and would use the task's address for B if it shared a longer prefix "+
		"with B's than A's does: the task is chosen (restarted until) it does not. "+
		"figures are the medians of the runs, latency is from the dial to the server's close.\n\n",
		c.n, c.whois, smallflow.Size, smallflow.Size, c.conc, c.dur, c.repeats, warm)

	fb := r.firstByte
	fmt.Fprintf(&w, "| Figure | agent | task | task ÷ agent |\n| --- | --- | --- | --- |\n")
	lat := func(label string, a, t taskbench.Latency, unit time.Duration, format string) {
		rows := []struct {
			what string
			a, t time.Duration
		}{{"p50", a.P50, t.P50}, {"p99", a.P99, t.P99}, {"mean", a.Mean, t.Mean}}
		u := unitName(unit)
		for _, x := range rows {
			fmt.Fprintf(&w, "| %s, %s (%s) | %s | %s | %s |\n", label, x.what, u,
				cell(x.a, a.N, unit, format), cell(x.t, t.N, unit, format), ratio(float64(x.t), float64(x.a)))
		}
	}
	lat("Start to first byte", fb.Agent, fb.Task, time.Millisecond, "%.3f")
	fmt.Fprintf(&w, "| Start to first byte, task − agent, p50 (ms) | — | %.3f | — |\n", ms(fb.Task.P50-fb.Agent.P50))
	fmt.Fprintf(&w, "| `StartTask` alone, p50 / p99 (ms) | — | %.3f / %.3f | — |\n", ms(fb.StartTask.P50), ms(fb.StartTask.P99))
	lat("WhoIs on B", r.whois.Agent, r.whois.Task, time.Microsecond, "%.2f")

	ma, mt := medians(r.agentRuns), medians(r.taskRuns)
	fmt.Fprintf(&w, "| **Small flows, %d in flight (conn/s)** | %.0f | %.0f | **%s** |\n", c.conc, ma.ConnsPerSec, mt.ConnsPerSec, ratio(mt.ConnsPerSec, ma.ConnsPerSec))
	fmt.Fprintf(&w, "| Small flows, p50 latency (ms) | %.3f | %.3f | %s |\n", ma.P50Ms, mt.P50Ms, ratio(mt.P50Ms, ma.P50Ms))
	fmt.Fprintf(&w, "| Small flows, p99 latency (ms) | %.3f | %.3f | %s |\n", ma.P99Ms, mt.P99Ms, ratio(mt.P99Ms, ma.P99Ms))
	fmt.Fprintf(&w, "| Small flows, CPU per connection, whole process (µs) | %.0f | %.0f | %s |\n", us(ma.CPU), us(mt.CPU), ratio(us(mt.CPU), us(ma.CPU)))
	fmt.Fprintf(&w, "| Small flows, failed connections (all runs) | %d | %d | — |\n", ma.Errors, mt.Errors)

	target := "met"
	if ma.ConnsPerSec == 0 || mt.ConnsPerSec/ma.ConnsPerSec < 0.95 {
		target = "**not met**"
	}
	fmt.Fprintf(&w, "\nTarget (issue 4): task ÷ agent conn/s ≥ 0.95: %s.\n", target)

	fmt.Fprintf(&w, "\nFirst byte: %d task calls and %d agent calls succeeded, %d failed", fb.Task.N, fb.Agent.N, fb.Errors)
	if fb.FirstError != "" {
		fmt.Fprintf(&w, " (first: %s)", strings.ReplaceAll(fb.FirstError, "|", "/"))
	}
	fmt.Fprintf(&w, "; A's filter held %d packets for delegations and dropped %d of them undelivered; slowest task call %.3f ms, agent call %.3f ms.\n",
		fb.Held, fb.Undelivered, ms(fb.Task.Max), ms(fb.Agent.Max))

	fmt.Fprintf(&w, "At the end, A's filter drops: %s; B's: %s; B's membership refusals: %s.\n",
		counts(r.dropsA), counts(r.dropsB), counts(r.refusedB))
	fmt.Fprintf(&w, "A's task_ended drops are the tails of the first-byte calls' connections (each call ends its task right "+
		"after closing the connection): A's packets from, and B's to, tasks already ended.\n")

	fmt.Fprintf(&w, "\n## Task benchmark runs\n\nSmall flows, every run in order: conn/s (p50 ms, p99 ms, CPU µs per connection, failed).\n\n")
	fmt.Fprintf(&w, "| Source | %s |\n|%s\n", strings.Join(runHeaders(c.repeats), " | "), strings.Repeat(" --- |", c.repeats+1))
	for _, x := range []struct {
		name string
		runs []flowRun
	}{{"agent", r.agentRuns}, {"task", r.taskRuns}} {
		var cells []string
		for _, s := range x.runs {
			cells = append(cells, fmt.Sprintf("%.0f (%.3f, %.3f, %.0f, %d)", s.ConnsPerSec, s.P50Ms, s.P99Ms, us(s.cpuPerConn()), s.Errors))
		}
		fmt.Fprintf(&w, "| %s | %s |\n", x.name, strings.Join(cells, " | "))
	}
	return w.String()
}

// counts renders counters by name, or "none".
func counts(m map[string]uint64) string {
	if len(m) == 0 {
		return "none"
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(out, ", ")
}

func runHeaders(n int) []string {
	var h []string
	for i := range n {
		h = append(h, fmt.Sprintf("Run %d", i+1))
	}
	return h
}

// medians returns, field by field, the median of runs (the upper middle
// one for an even count); Errors is the sum, and CPU the median CPU time
// per connection.
func medians(runs []flowRun) flowRun {
	if len(runs) == 0 {
		return flowRun{}
	}
	med := func(get func(flowRun) float64) float64 {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = get(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	var m flowRun
	m.ConnsPerSec = med(func(r flowRun) float64 { return r.ConnsPerSec })
	m.P50Ms = med(func(r flowRun) float64 { return r.P50Ms })
	m.P99Ms = med(func(r flowRun) float64 { return r.P99Ms })
	m.CPU = time.Duration(med(func(r flowRun) float64 { return float64(r.cpuPerConn()) }))
	for _, r := range runs {
		m.Errors += r.Errors
	}
	return m
}

func cell(d time.Duration, n int, unit time.Duration, format string) string {
	if n == 0 {
		return "—"
	}
	return fmt.Sprintf(format, float64(d)/float64(unit))
}

func ratio(a, b float64) string {
	if b == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func unitName(u time.Duration) string {
	if u == time.Microsecond {
		return "µs"
	}
	return "ms"
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
