// Command taskbench measures agent6's tasks in one process, without root:
// two embedded nodes, A and B, on 127.0.0.1 (package bench/taskbench). It
// measures the time from A.StartTask to the first byte of B's reply at a
// connection from the new task (against a connection from A's own address),
// B.WhoIs of A's address and of a task's, and the rate of short connections
// (smallflow's: new connection, 1 KiB each way, server closes) from a task's
// address against A's own. It prints a table and writes it, as its own
// section, to -out.
//
//	taskbench -n 200 -c 16 -d 5s -repeats 3 -out bench/RESULTS.md
package main

import (
	"github.com/agent6/agent6/bench/internal/report"

	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/agent6/agent6/bench/smallflow"
	"github.com/agent6/agent6/bench/taskbench"
)

// config is what the flags set.
type config struct {
	n       int           // first-byte iterations
	whois   int           // WhoIs calls per address
	conc    int           // small flows in flight
	dur     time.Duration // per small-flow run
	repeats int           // small-flow runs per address
	warmup  time.Duration // unmeasured small-flow run per address, first
	out     string
	timeout time.Duration
	verbose bool
}

func main() {
	var c config
	flag.IntVar(&c.n, "n", 200, "first-byte iterations (each one task call and one agent call)")
	flag.IntVar(&c.whois, "whois", 50000, "WhoIs calls per address")
	flag.IntVar(&c.conc, "c", 16, "small-flow connections in flight")
	flag.DurationVar(&c.dur, "d", 5*time.Second, "length of each small-flow run")
	flag.IntVar(&c.repeats, "repeats", 7, "small-flow runs per source address (alternating); 3 gave task ÷ agent ratios from 0.90 to 1.09 on one machine")
	flag.DurationVar(&c.warmup, "warmup", 3*time.Second, "length of an unmeasured small-flow run from each source address before the measured ones")
	flag.StringVar(&c.out, "out", "bench/RESULTS.md", "write the results as a section of this `file` (empty: do not)")
	flag.DurationVar(&c.timeout, "timeout", 3*time.Minute, "budget for the whole run")
	flag.BoolVar(&c.verbose, "v", false, "log the nodes' warnings to stderr")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "taskbench:", err)
		os.Exit(1)
	}
}

// flowRun is one small-flow run and the CPU time the whole process (both
// nodes and the client) used during it.
type flowRun struct {
	smallflow.Result
	CPU time.Duration
}

// cpuPerConn is the process's CPU time per successful connection.
func (r flowRun) cpuPerConn() time.Duration {
	if r.Connections == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Connections)
}

// results is everything one run measured.
type results struct {
	cfg       config
	start     time.Time
	wall      time.Duration
	loadStart string
	loadEnd   string

	firstByte taskbench.FirstByteResult
	whois     taskbench.WhoIsResult
	agentRuns []flowRun // from A's own address, in order
	taskRuns  []flowRun // from one task's address, in order

	dropsA, dropsB, refusedB map[string]uint64 // at the end
}

func run(ctx context.Context, c config) error {
	var logger *slog.Logger
	if c.verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	r := &results{cfg: c, start: time.Now(), loadStart: report.LoadAvg()}
	p, err := taskbench.NewPair(ctx, logger)
	if err != nil {
		return err
	}
	defer p.Close()
	fmt.Fprintf(os.Stderr, "taskbench: A %s, B %s\n", p.A.Addr(), p.B.Addr())

	fmt.Fprintf(os.Stderr, "taskbench: first byte, %d iterations\n", c.n)
	if r.firstByte, err = p.FirstByte(ctx, c.n); err != nil {
		return err
	}

	task, err := p.DeliveredTask(ctx)
	if err != nil {
		return err
	}
	defer task.End()
	fmt.Fprintf(os.Stderr, "taskbench: WhoIs, %d calls per address (task %s)\n", c.whois, task.Addr())
	if r.whois, err = p.WhoIs(c.whois, task.Addr()); err != nil {
		return err
	}

	// A fresh netstack carries the first tens of thousands of short
	// connections faster than later ones (the server's TIME_WAIT state
	// builds up), so both sources run unmeasured first.
	if c.warmup > 0 {
		for _, f := range []taskbench.Flows{{Dial: p.A.Dial, From: p.A.Addr()}, {Dial: task.Dial, From: task.Addr()}} {
			f.Addr, f.Concurrency, f.Duration = p.FlowAddr(), c.conc, c.warmup
			res, err := f.Run(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "taskbench: warm-up: %.0f conn/s\n", res.ConnsPerSec)
		}
	}

	// Alternate the sources, A's first in even repeats and the task's
	// first in odd ones, so that neither always runs on a fresher stack.
	for i := range c.repeats {
		order := []bool{false, true}
		if i%2 == 1 {
			order = []bool{true, false}
		}
		for _, fromTask := range order {
			f := taskbench.Flows{Dial: p.A.Dial, From: p.A.Addr(), Addr: p.FlowAddr(), Concurrency: c.conc, Duration: c.dur}
			name := "agent"
			if fromTask {
				f.Dial, f.From, name = task.Dial, task.Addr(), "task"
			}
			cpu0 := report.ProcessCPU()
			sr, err := f.Run(ctx)
			if err != nil {
				return err
			}
			res := flowRun{Result: sr, CPU: report.ProcessCPU() - cpu0}
			fmt.Fprintf(os.Stderr, "taskbench: flows %d/%d from %s: %.0f conn/s, p50 %.3f ms, p99 %.3f ms, %.0f µs CPU/conn, %d errors (load %s)\n",
				i+1, c.repeats, name, res.ConnsPerSec, res.P50Ms, res.P99Ms, float64(res.cpuPerConn())/1e3, res.Errors, report.LoadAvg())
			if fromTask {
				r.taskRuns = append(r.taskRuns, res)
			} else {
				r.agentRuns = append(r.agentRuns, res)
			}
		}
	}
	if r.dropsA, r.dropsB, r.refusedB, err = p.Counters(); err != nil {
		return err
	}
	r.wall = time.Since(r.start)
	r.loadEnd = report.LoadAvg()

	section := r.report()
	fmt.Print(section)
	if c.out != "" {
		if err := report.WriteSection(c.out, sectionTitle, section); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "taskbench: wrote %s\n", c.out)
	}
	return nil
}
