package taskbench

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/agent6/agent6/bench/smallflow"
	"github.com/agent6/agent6/node"
)

// Latency summarises a sample of durations.
type Latency struct {
	N    int           `json:"n"`
	Mean time.Duration `json:"mean_ns"`
	P50  time.Duration `json:"p50_ns"`
	P99  time.Duration `json:"p99_ns"`
	Max  time.Duration `json:"max_ns"`
}

// Summarize sorts d in place and summarises it.
func Summarize(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	slices.Sort(d)
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return Latency{N: len(d), Mean: sum / time.Duration(len(d)), P50: smallflow.Percentile(d, 50), P99: smallflow.Percentile(d, 99), Max: d[len(d)-1]}
}

// FirstByteResult is what FirstByte measured.
type FirstByteResult struct {
	// Task: from just before A.StartTask to the first byte of B's
	// greeting at a connection dialled from the new task's address. B
	// never saw the task, so the connection's SYN is held until B has
	// acknowledged the delegation.
	Task Latency `json:"task"`
	// StartTask is the A.StartTask call alone, part of Task.
	StartTask Latency `json:"start_task"`
	// Agent: from just before A.Dial to the first byte of the greeting, at
	// a connection from A's own address (the baseline).
	Agent Latency `json:"agent"`
	// Errors counts failed iterations (not in the latencies).
	Errors     int    `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
	// Held and Undelivered are A's filter counters over the run: packets
	// held for a delegation, and held packets dropped.
	Held        uint64 `json:"held_packets"`
	Undelivered uint64 `json:"undelivered_drops"`
}

// FirstByte runs n iterations, each one task call and one agent call (in
// alternating order), one at a time. Each task is new, so B has never seen
// it, and is ended after its call. WireGuard's session is already up.
func (p *Pair) FirstByte(ctx context.Context, n int) (FirstByteResult, error) {
	var r FirstByteResult
	before, err := p.A.Status()
	if err != nil {
		return r, err
	}
	var task, start, agent []time.Duration
	fail := func(err error) {
		r.Errors++
		if r.FirstError == "" {
			r.FirstError = err.Error()
		}
	}
	taskCall := func() {
		t0 := time.Now()
		t, err := p.A.StartTask(ctx, node.TaskSpec{Class: "bench", TTL: 10 * time.Minute})
		if err != nil {
			fail(err)
			return
		}
		started := time.Since(t0)
		from, at, err := p.hello(ctx, t.Dial)
		d := at.Sub(t0)
		t.End()
		switch {
		case err != nil:
			fail(fmt.Errorf("task call: %w", err))
		case from != t.Addr():
			fail(fmt.Errorf("task call came from %s, not the task's %s", from, t.Addr()))
		default:
			task, start = append(task, d), append(start, started)
		}
	}
	agentCall := func() {
		t0 := time.Now()
		from, at, err := p.hello(ctx, p.A.Dial)
		switch {
		case err != nil:
			fail(fmt.Errorf("agent call: %w", err))
		case from != p.A.Addr():
			fail(fmt.Errorf("agent call came from %s, not A's %s", from, p.A.Addr()))
		default:
			agent = append(agent, at.Sub(t0))
		}
	}
	for i := range n {
		if ctx.Err() != nil {
			return r, fmt.Errorf("taskbench: first byte: %w", ctx.Err())
		}
		if i%2 == 0 {
			taskCall()
			agentCall()
		} else {
			agentCall()
			taskCall()
		}
	}
	after, err := p.A.Status()
	if err != nil {
		return r, err
	}
	r.Task, r.StartTask, r.Agent = Summarize(task), Summarize(start), Summarize(agent)
	r.Held = after.Filter.Held - before.Filter.Held
	r.Undelivered = after.Filter.Drops["task_undelivered"] - before.Filter.Drops["task_undelivered"]
	return r, nil
}

// Counters are the nodes' filter drops (by reason, non-zero only) and
// B's membership refusals, since the nodes started.
func (p *Pair) Counters() (dropsA, dropsB, refusedB map[string]uint64, err error) {
	sa, err := p.A.Status()
	if err != nil {
		return nil, nil, nil, err
	}
	sb, err := p.B.Status()
	if err != nil {
		return nil, nil, nil, err
	}
	nonzero := func(m map[string]uint64) map[string]uint64 {
		out := map[string]uint64{}
		for k, v := range m {
			if v != 0 {
				out[k] = v
			}
		}
		return out
	}
	refusedB = map[string]uint64{}
	if sb.Membership != nil {
		refusedB = nonzero(sb.Membership.Refused)
	}
	return nonzero(sa.Filter.Drops), nonzero(sb.Filter.Drops), refusedB, nil
}

// WhoIsResult is what WhoIs measured on B.
type WhoIsResult struct {
	Agent Latency `json:"agent"` // B.WhoIs(A's address)
	Task  Latency `json:"task"`  // B.WhoIs(the address of A's task)
}

// WhoIs times n calls of B.WhoIs for A's address and n for task's, which
// B must have accepted, alternating. Each call is timed alone, so the
// figures include a clock read (tens of ns).
func (p *Pair) WhoIs(n int, task netip.Addr) (WhoIsResult, error) {
	agent := p.A.Addr()
	for _, a := range []netip.Addr{agent, task} {
		if _, err := p.B.WhoIs(a); err != nil {
			return WhoIsResult{}, err
		}
	}
	if w, _ := p.B.WhoIs(task); w.Task == nil {
		return WhoIsResult{}, fmt.Errorf("taskbench: B does not know %s as a task", task)
	}
	da, dt := make([]time.Duration, 0, n), make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		_, err1 := p.B.WhoIs(agent)
		t1 := time.Now()
		_, err2 := p.B.WhoIs(task)
		t2 := time.Now()
		if err := errors.Join(err1, err2); err != nil {
			return WhoIsResult{}, err
		}
		da, dt = append(da, t1.Sub(t0)), append(dt, t2.Sub(t1))
	}
	return WhoIsResult{Agent: Summarize(da), Task: Summarize(dt)}, nil
}

// DeliveredTask starts a task on A and makes one call from it to B, so that
// B holds its delegation.
//
// A.Dial does not bind A's own address in embedded mode, so gVisor picks
// the source by RFC 6724 (rule 8, longest matching prefix): while a task
// whose address shares a longer prefix with B's than A's does is running,
// A.Dial's connections to B leave from the task's address. DeliveredTask
// therefore ends and replaces such tasks, so that A.Dial keeps A's address
// while the task runs.
func (p *Pair) DeliveredTask(ctx context.Context) (*node.Task, error) {
	var t *node.Task
	for {
		var err error
		if t, err = p.A.StartTask(ctx, node.TaskSpec{Class: "bench", TTL: time.Hour}); err != nil {
			return nil, err
		}
		if MatchingPrefix(t.Addr(), p.B.Addr()) <= MatchingPrefix(p.A.Addr(), p.B.Addr()) {
			break
		}
		t.End()
	}
	if _, _, err := p.hello(ctx, t.Dial); err != nil {
		t.End()
		return nil, fmt.Errorf("taskbench: first call from task: %w", err)
	}
	return t, nil
}

// MatchingPrefix is the number of leading bits a and b share.
func MatchingPrefix(a, b netip.Addr) int {
	x, y := a.As16(), b.As16()
	for i := range x {
		if d := x[i] ^ y[i]; d != 0 {
			return 8*i + bits.LeadingZeros8(d)
		}
	}
	return 128
}

// Flows measures short connections to B's smallflow service: the same
// work as smallflow.Client.Run, but dialled with Dial (node.Node.Dial or
// node.Task.Dial) instead of the host's stack.
type Flows struct {
	Dial Dialer
	// From, if valid, is the address every connection must leave from; a
	// connection from another one fails.
	From netip.Addr
	// Addr is the server's [address]:port.
	Addr string
	// Concurrency is the number of connections in flight; default 16.
	Concurrency int
	// Duration is how long new connections are started; default 5s.
	Duration time.Duration
	// Size is the request and response size; default smallflow.Size.
	Size int
}

// connTimeout bounds each connection.
const connTimeout = 10 * time.Second

// Run opens connections, Concurrency at a time, until Duration has passed
// or ctx is done, then waits for those in flight. Latency runs from the
// dial to the server's close. It fails only if ctx ends the run early.
func (f *Flows) Run(ctx context.Context) (smallflow.Result, error) {
	conc := orDefault(f.Concurrency, 16)
	dur := orDefault(f.Duration, 5*time.Second)
	size := orDefault(f.Size, smallflow.Size)
	start := time.Now()
	deadline := start.Add(dur)
	workers := make([]flowWorker, conc)
	var wg sync.WaitGroup
	for i := range workers {
		w := &workers[i]
		wg.Go(func() { w.run(ctx, f, size, deadline) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil {
		return smallflow.Result{}, fmt.Errorf("taskbench: flows cut short: %w", err)
	}
	var r smallflow.Result
	var lat []time.Duration
	for _, w := range workers {
		lat = append(lat, w.lat...)
		r.Errors += w.errors
		if r.FirstError == "" && w.firstErr != nil {
			r.FirstError = w.firstErr.Error()
		}
	}
	s := Summarize(lat)
	r.Connections = s.N
	r.Seconds = elapsed.Seconds()
	r.ConnsPerSec = float64(s.N) / elapsed.Seconds()
	r.P50Ms = float64(s.P50) / float64(time.Millisecond)
	r.P99Ms = float64(s.P99) / float64(time.Millisecond)
	return r, nil
}

// flowWorker runs connections one after another; only its goroutine
// touches it until Run's WaitGroup is done.
type flowWorker struct {
	lat      []time.Duration
	errors   int
	firstErr error
}

func (w *flowWorker) run(ctx context.Context, f *Flows, size int, deadline time.Time) {
	req, resp := make([]byte, size), make([]byte, size)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		t0 := time.Now()
		if err := roundTrip(ctx, f, req, resp); err != nil {
			w.errors++
			if w.firstErr == nil {
				w.firstErr = err
			}
			continue
		}
		w.lat = append(w.lat, time.Since(t0))
	}
}

// roundTrip is smallflow's, checking that the connection left from the
// address under test.
func roundTrip(ctx context.Context, f *Flows, req, resp []byte) error {
	return smallflow.RoundTrip(ctx, f.Dial, f.Addr, req, resp, func(c net.Conn) error {
		if from := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); f.From.IsValid() && from != f.From {
			return fmt.Errorf("taskbench: connection left from %s, not %s", from, f.From)
		}
		return nil
	})
}

// orDefault returns v, or def if v is zero or negative.
func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}
