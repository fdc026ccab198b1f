// Package gossip measures membership at scale, in one process and without
// root: n embedded agent6 nodes (each a gVisor netstack and a wireguard-go
// device on 127.0.0.1) gossiping inside the overlay, and, as the baseline,
// n bare hashicorp/memberlist instances on 127.0.0.1 with the same timing.
//
// For one system at one size, Run measures the time from the start of the
// joins until every instance sees every other alive, the bytes each
// instance sends per second once the cluster is at rest, the memory and
// goroutines each instance holds, and, optionally, how long the others
// take to drop an instance that crashes, one cut off from gossip and one
// that leaves.
package gossip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/agent6/agent6/bench/internal/report"
	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/membership"
)

// The systems Run measures.
const (
	Agent6     = "agent6"     // embedded agent6 nodes, gossip inside WireGuard
	Memberlist = "memberlist" // bare memberlist on loopback UDP and TCP
)

var loopback = netip.MustParseAddr("127.0.0.1")

// Options configure one measurement. Zero durations take the defaults
// given.
type Options struct {
	System string // Agent6 or Memberlist
	Nodes  int    // at least 4 with Removal, else 2
	// Wave, if positive, starts the nodes after the seed Wave at a time,
	// WaveGap apart (default 1 s), instead of all at once.
	Wave    int
	WaveGap time.Duration
	// Tune adjusts each instance's memberlist.DefaultLANConfig(), the same
	// for both systems; nil leaves it unchanged.
	Tune func(*memberlist.Config)
	// Converge bounds the wait for a full mesh (default 2 min).
	Converge time.Duration
	// Settle is the least wait between convergence and the rest window
	// (default 5 s); the wait goes on, up to SettleMax (default 1 min),
	// until the broadcasts queued in memberlist average less than one per
	// instance: the join's alive, suspect and dead messages are still
	// being retransmitted until then. Window is the rest window's length
	// (default 10 s).
	Settle, SettleMax, Window time.Duration
	// Removal also measures how long the others take to drop an instance
	// that crashes, one cut off from gossip and one that leaves, waiting
	// at most RemovalTimeout (default 2 min) for each.
	// ReturnWait (default 15 s, longer than membership's 10 s reconnect of
	// peers declared dead) is how long after a removal Run looks again
	// whether the node came back.
	Removal        bool
	RemovalTimeout time.Duration
	ReturnWait     time.Duration
	// MemLimit stops the measurement when the process's RSS exceeds it (0:
	// no limit), and MinAvailable when the machine's MemAvailable falls
	// below it (default 1 GiB): the machine may be shared.
	MemLimit     uint64
	MinAvailable uint64
	// Logger receives agent6's node logs, each with a "node" index; nil
	// discards them. Bare memberlist's logs are discarded.
	Logger *slog.Logger
	// Progress, if set, is told what is happening.
	Progress func(format string, args ...any)
	// Crypto, if measured, prices agent6's join cryptography (see
	// Result.CryptoCPU).
	Crypto CryptoCost

	// Trace, with Progress, reports every second of the convergence how
	// the pairs not yet alive stand (gone, pending, suspect, dead).
	Trace bool
	// AtRest, if set, is called at the end of the rest window, with the
	// cluster still up (to take a heap profile, say).
	AtRest func()
}

// Result is one system measured at one size. A zero figure was not
// measured; Failure says why.
type Result struct {
	System string `json:"system"`
	Nodes  int    `json:"nodes"`
	// Failure is set when the cluster did not come up or converge.
	Failure string `json:"failure,omitempty"`
	// LoadAvg is /proc/loadavg (1, 5, 15 min) when the measurement began.
	LoadAvg string `json:"load_avg"`

	// Startup is from the start of the joins until every instance was
	// created (agent6: every Up returned), Convergence until every
	// instance saw every other alive.
	Startup     Seconds `json:"startup_s"`
	Convergence Seconds `json:"convergence_s,omitempty"`
	// Pairs is how many (i, j) had i seeing j alive when convergence was
	// last checked, out of Nodes×(Nodes-1).
	Pairs int `json:"pairs"`
	// JoinCPU is the process's CPU time from the start of the joins to
	// convergence.
	JoinCPU Seconds `json:"join_cpu_s,omitempty"`
	// Sessions is, for agent6, how many pairs of nodes had a WireGuard
	// session (a completed handshake) at convergence, and CryptoCPU the
	// least CPU time the join's cryptography took: admitting every pair
	// and those handshakes, at Options.Crypto's costs. Retried and
	// repeated handshakes, and the join's other work, come on top.
	Sessions  int     `json:"sessions,omitempty"`
	CryptoCPU Seconds `json:"crypto_cpu_s,omitempty"`
	// JoinEvents are memberlist's state changes from the start of the
	// joins to convergence (or to giving up), RestEvents those in the
	// rest window.
	JoinEvents Events `json:"join_events"`
	RestEvents Events `json:"rest_events"`

	// Settled is the wait from convergence to the rest window, and
	// Queued the broadcasts queued per instance when it ended.
	Settled Seconds `json:"settled_s,omitempty"`
	Queued  float64 `json:"queued_per_node"`
	// At rest, per instance and second, in the window: what went on the
	// underlay (agent6: WireGuard's UDP payload; memberlist: its UDP and
	// TCP payload), what memberlist itself wrote, and what it wrote to
	// streams.
	WindowWire    float64 `json:"window_wire_bytes_per_node_s,omitempty"`
	WindowPayload float64 `json:"window_payload_bytes_per_node_s,omitempty"`
	WindowStreams float64 `json:"window_stream_bytes_per_node_s,omitempty"`
	// WireBytes and PayloadBytes are the window's figures without its
	// streams: probes and gossip, between push/pulls. The wire bytes of
	// the streams are estimated from their payload, scaled as in
	// PushPullWire ÷ PushPullPayload.
	WireBytes    float64 `json:"wire_bytes_per_node_s,omitempty"`
	PayloadBytes float64 `json:"payload_bytes_per_node_s,omitempty"`
	// PushPullWire and PushPullPayload are the bytes of one push/pull
	// exchange, both ways, measured after the rest window: memberlist's
	// scheduled push/pulls come one interval after a random stagger, so
	// they seldom fall in the window. Each node starts one every
	// PushPullInterval.
	PushPullWire     float64 `json:"push_pull_wire_bytes,omitempty"`
	PushPullPayload  float64 `json:"push_pull_payload_bytes,omitempty"`
	PushPullInterval Seconds `json:"push_pull_interval_s,omitempty"`
	// RestCPU is the whole cluster's CPU use at rest, in cores.
	RestCPU float64 `json:"rest_cpu_cores,omitempty"`
	// RestPairs is Pairs at the end of the rest window.
	RestPairs int `json:"rest_pairs,omitempty"`
	// RestHellos is agent6's control frames sent during the rest window,
	// all nodes.
	RestHellos uint64 `json:"rest_hellos,omitempty"`

	// Memory per instance, over what the process held before the
	// measurement: Go heap in use after a GC, and resident set.
	HeapPerNode       float64 `json:"heap_bytes_per_node,omitempty"`
	RSSPerNode        float64 `json:"rss_bytes_per_node,omitempty"`
	GoroutinesPerNode float64 `json:"goroutines_per_node,omitempty"`
	PeakRSS           uint64  `json:"peak_rss_bytes,omitempty"`
	// BaseRSS is the process's RSS before the size started (after a GC).
	BaseRSS uint64 `json:"base_rss_bytes,omitempty"`

	// Stats sums agent6's membership counters over the nodes at the end.
	Stats *membership.Stats `json:"membership,omitempty"`
	// FilterDrops sums the packets agent6's filters dropped, by reason,
	// over the nodes at the end.
	FilterDrops map[string]uint64 `json:"filter_drops,omitempty"`
	// Handshakes sums agent6's first-handshake counters over the nodes at
	// the end: crossed initiations held, and initiations redelivered.
	Handshakes *node.HandshakeStatus `json:"handshakes,omitempty"`

	// Leaked is set when closing the cluster did not finish: its
	// goroutines and memory are still held.
	Leaked bool `json:"leaked,omitempty"`

	// Removals: a node that crashed, one cut off from gossip, one that
	// left (see removals).
	Crash     *Removal `json:"crash,omitempty"`
	Partition *Removal `json:"partition,omitempty"`
	Leave     *Removal `json:"leave,omitempty"`
}

// Removal is how long the other instances took to drop one instance.
type Removal struct {
	// Dead is until every other instance saw it dead or left (memberlist:
	// no longer listed); PeerGone until none had it as a WireGuard peer
	// (agent6 only). Zero if it did not happen within the timeout.
	Dead     Seconds `json:"dead_s,omitempty"`
	PeerGone Seconds `json:"peer_gone_s,omitempty"`
	// Remaining is how many instances still listed it alive or suspect, or
	// as a peer, when the wait ended.
	Remaining int `json:"remaining,omitempty"`
	// Returned is how many instances listed it alive or suspect, or had
	// it as a WireGuard peer, again Options.ReturnWait after all had
	// dropped it.
	Returned int `json:"returned,omitempty"`
	// Left describes a few of the instances remaining at the timeout.
	Left string `json:"left,omitempty"`
}

// Seconds is a duration reported in seconds.
type Seconds float64

func seconds(d time.Duration) Seconds { return Seconds(d.Seconds()) }

// Run measures one system at one size. It closes every instance it made
// before it returns; the Result says what failed, if anything did.
func Run(ctx context.Context, o Options) *Result {
	o.defaults()
	r := &Result{System: o.System, Nodes: o.Nodes, LoadAvg: report.LoadAvg()}
	var c cluster
	quiesce(30 * time.Second)
	runtime.GC()
	debug.FreeOSMemory()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	baseRSS, _ := RSS()
	r.BaseRSS = baseRSS
	baseG := runtime.NumGoroutine()
	cpu0, ev0 := CPUTime(), events()

	// The watchdog stops the measurement before memory runs out.
	ctx, stop := context.WithCancelCause(ctx)
	var peak atomic.Uint64
	var wg sync.WaitGroup
	wg.Go(func() { watchMemory(ctx, stop, o.MemLimit, o.MinAvailable, &peak) })
	defer func() {
		stop(nil)
		wg.Wait()
		r.PeakRSS = peak.Load()
	}()
	failed := func(what string, err error) *Result {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			err = fmt.Errorf("%w; %w", cause, err)
		}
		r.Failure = what + err.Error()
		if c != nil {
			r.Stats, r.FilterDrops, r.Handshakes = statsOf(c), c.filterDrops(), c.handshakes()
		}
		return r
	}

	o.progress("%s, %d nodes: starting", o.System, o.Nodes)
	var (
		t0  time.Time
		err error
	)
	switch o.System {
	case Agent6:
		var a *agent6
		a, t0, err = startAgent6(ctx, o.Nodes, waves{o.Wave, o.WaveGap}, o.Tune, o.Logger)
		if a != nil {
			c = a
		}
	case Memberlist:
		var m *bare
		m, t0, err = startBare(ctx, o.Nodes, waves{o.Wave, o.WaveGap}, o.Tune)
		if m != nil {
			c = m
		}
	default:
		err = fmt.Errorf("unknown system %q", o.System)
	}
	if err != nil {
		return failed("start: ", err)
	}
	r.Startup = seconds(time.Since(t0))
	defer func() {
		o.progress("%s, %d nodes: closing", o.System, o.Nodes)
		if err := closeWithin(c, closeTimeout); err != nil {
			r.Failure = strings.TrimPrefix(r.Failure+"; "+err.Error(), "; ")
			r.Leaked = true
		}
	}()

	o.progress("%s, %d nodes: all started in %.1f s; waiting for convergence", o.System, o.Nodes, r.Startup)
	conv, err := converge(ctx, c, o, t0, &r.Pairs)
	r.JoinEvents = events().sub(ev0)
	if err != nil {
		return failed("", err)
	}
	r.Convergence = seconds(conv)
	r.JoinCPU = seconds(CPUTime() - cpu0)
	o.progress("%s, %d nodes: converged in %.2f s; settling", o.System, o.Nodes, r.Convergence)
	if r.Sessions = c.sessions(); r.Sessions > 0 && o.Crypto.DH > 0 {
		r.CryptoCPU = seconds(o.Crypto.Admissions(o.Nodes) + o.Crypto.Handshakes(r.Sessions))
	}

	if r.Settled, r.Queued, err = settle(ctx, o); err != nil {
		return failed("at rest: ", err)
	}
	w0, p0, s0, cpuA, evA := c.wireBytes(), payload(c, o.Nodes), streams(c, o.Nodes), CPUTime(), events()
	h0 := c.stats().Hellos
	start := time.Now()
	if !sleep(ctx, o.Window) {
		return failed("at rest: ", ctx.Err())
	}
	w1, p1, s1, cpuB := c.wireBytes(), payload(c, o.Nodes), streams(c, o.Nodes), CPUTime()
	r.RestEvents = events().sub(evA)
	h1 := c.stats().Hellos
	el := time.Since(start).Seconds()
	per := float64(o.Nodes) * el
	r.WindowWire = float64(w1-w0) / per
	r.WindowPayload = float64(p1-p0) / per
	r.WindowStreams = float64(s1-s0) / per
	// Push/pulls that fell in the window (memberlist's first scheduled
	// ones, rejoins) are taken out, in proportion, and counted once below.
	r.PushPullWire, r.PushPullPayload = pushPulls(ctx, c, o.Nodes, r.WindowWire-r.WindowStreams, r.WindowPayload-r.WindowStreams)
	k := 1.0
	if r.PushPullPayload > 0 {
		k = r.PushPullWire / r.PushPullPayload
	}
	r.WireBytes = max(0, r.WindowWire-k*r.WindowStreams)
	r.PayloadBytes = r.WindowPayload - r.WindowStreams
	mc := memberlist.DefaultLANConfig()
	o.Tune(mc)
	r.PushPullInterval = seconds(PushPullInterval(mc, o.Nodes))
	r.RestCPU = (cpuB - cpuA).Seconds() / el
	r.RestHellos = h1 - h0
	for i := range o.Nodes {
		r.RestPairs += c.seesAlive(i)
	}

	if o.AtRest != nil {
		o.AtRest()
	}
	// As for the base: a GC, and what it freed handed back to the OS, or
	// the storm's garbage, freed but still resident until the scavenger
	// gets to it, counts as the nodes' (200 agent6 nodes measured 36 and
	// 63 MiB each in two runs without).
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, _ := RSS()
	n := float64(o.Nodes)
	r.HeapPerNode = (float64(ms.HeapInuse) - float64(base.HeapInuse)) / n
	r.RSSPerNode = (float64(rss) - float64(baseRSS)) / n
	r.GoroutinesPerNode = float64(runtime.NumGoroutine()-baseG) / n
	o.progress("%s, %d nodes: settled in %.0f s (%.1f broadcasts queued per node); between push/pulls %.0f B/node/s on the wire, %.0f of memberlist payload; a push/pull %.1f KiB on the wire; RSS %.1f MiB/node",
		o.System, o.Nodes, r.Settled, r.Queued, r.WireBytes, r.PayloadBytes, r.PushPullWire/1024, r.RSSPerNode/(1<<20))

	if o.Removal {
		r.Crash, r.Partition, r.Leave = removals(ctx, c, o)
		if ctx.Err() != nil {
			return failed("removal: ", ctx.Err())
		}
	}
	r.Stats, r.FilterDrops, r.Handshakes = statsOf(c), c.filterDrops(), c.handshakes()
	return r
}

// closeTimeout bounds the close of a cluster.
const closeTimeout = 3 * time.Minute

// closeWithin closes c, giving up after d: a close that hangs is a bug to
// report, and the caller should not go on to larger clusters.
func closeWithin(c cluster, d time.Duration) error {
	done := make(chan struct{})
	go func() { // left behind if the close hangs
		c.close()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-time.After(d):
		return fmt.Errorf("closing the cluster did not finish in %v; its nodes are leaked", d)
	}
}

func (o *Options) defaults() {
	tune := o.Tune
	o.Tune = func(c *memberlist.Config) {
		if tune != nil {
			tune(c)
		}
		// Sample the broadcast queue every second, for settle; this
		// only samples a counter.
		c.QueueCheckInterval = time.Second
	}
	if o.SettleMax < o.Settle {
		o.SettleMax = max(o.Settle, time.Minute)
	}
	if o.WaveGap == 0 {
		o.WaveGap = time.Second
	}
	if o.Converge == 0 {
		o.Converge = 2 * time.Minute
	}
	if o.Settle == 0 {
		o.Settle = 5 * time.Second
	}
	if o.Window == 0 {
		o.Window = 10 * time.Second
	}
	if o.MinAvailable == 0 {
		o.MinAvailable = 1 << 30
	}
	if o.ReturnWait == 0 {
		o.ReturnWait = 15 * time.Second
	}
	if o.RemovalTimeout == 0 {
		o.RemovalTimeout = 2 * time.Minute
	}
	if o.Removal && o.Nodes < 4 {
		o.Removal = false
	}
}

func (o *Options) progress(format string, args ...any) {
	if o.Progress != nil {
		o.Progress(format, args...)
	}
}

func statsOf(c cluster) *membership.Stats {
	s := c.stats()
	if s.Admitted == 0 && s.Hellos == 0 {
		return nil // bare memberlist
	}
	return &s
}

// streams sums the bytes memberlist wrote to streams (push/pulls, TCP
// fallback pings), over every instance.
func streams(c cluster, n int) uint64 {
	var sum uint64
	for i := range n {
		if t := c.transport(i); t != nil {
			sum += t.streamBytes.Load()
		}
	}
	return sum
}

// payload sums the bytes memberlist wrote, over every instance.
func payload(c cluster, n int) uint64 {
	var sum uint64
	for i := range n {
		if t := c.transport(i); t != nil {
			sum += t.bytes()
		}
	}
	return sum
}

// pollers is how many instances converge polls at once. In a join storm
// an agent6 node answers Members() only once its memberlist's node lock
// and its membership's lock are free, and each wait ends only when the
// scheduler gets round to it among thousands of runnable goroutines;
// polled one after another, 140 nodes took 5 s, and with a sleep of twice
// that between rounds the convergence time was known only to within 15 s.
// In parallel the waits overlap.
const pollers = 16

// converge waits until every instance sees every other alive, and returns
// the time since t0. Each round polls the instances not yet complete,
// pollers at a time; when they all are, a second round checks every
// instance again (all complete at once, not each at some moment). Rounds
// are 100 ms apart: a poll costs little CPU (Members() copies a list), so
// polling does not starve the cluster. pairs is kept up to date.
func converge(ctx context.Context, c cluster, o Options, t0 time.Time, pairs *int) (time.Duration, error) {
	n := o.Nodes
	seen := make([]int, n)
	full := make([]bool, n)
	deadline := t0.Add(o.Converge)
	lastLog, lastTrace := time.Now(), time.Now()
	// round polls the instances that want(i), unless the time is up, and
	// reports whether every instance is complete.
	round := func(want func(i int) bool) (bool, error) {
		if err := ctx.Err(); err != nil {
			return false, fmt.Errorf("interrupted after %.0f s, %d of %d pairs admitted (%d of %d nodes complete)",
				time.Since(t0).Seconds(), sum(seen), n*(n-1), count(full), n)
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("did not converge in %.0f s: %d of %d pairs admitted (%d of %d nodes complete)",
				o.Converge.Seconds(), sum(seen), n*(n-1), count(full), n)
		}
		next := make(chan int)
		var wg sync.WaitGroup
		for range pollers {
			wg.Go(func() {
				for i := range next {
					seen[i] = c.seesAlive(i)
					full[i] = seen[i] == n-1
				}
			})
		}
		for i := range n {
			if want(i) {
				next <- i
			}
		}
		close(next)
		wg.Wait()
		return count(full) == n, nil
	}
	for {
		all, err := round(func(i int) bool { return !full[i] })
		if err == nil && all {
			all, err = round(func(int) bool { return true })
		}
		now := time.Now()
		*pairs = sum(seen)
		if err != nil {
			return 0, err
		}
		if all {
			return now.Sub(t0), nil
		}
		if o.Trace && now.Sub(lastTrace) >= time.Second {
			lastTrace = now
			o.progress("%s, %d nodes: %.1f s, %d of %d pairs alive; the others: %s", o.System, n, now.Sub(t0).Seconds(), *pairs, n*(n-1), notAlive(c, n))
		}
		if now.Sub(lastLog) > 10*time.Second {
			lastLog = now
			o.progress("%s, %d nodes: %.0f s, %d of %d pairs, %d nodes complete%s", o.System, n, now.Sub(t0).Seconds(), *pairs, n*(n-1), count(full), missingPairs(c, full))
		}
		sleep(ctx, 100*time.Millisecond)
	}
}

// PushPullSamples is how many push/pull exchanges are measured.
const PushPullSamples = 10

// pushPulls measures the bytes of one push/pull exchange, on the wire and
// of memberlist payload, between random pairs of instances, less the
// background traffic (wire and payload, per node and second) meanwhile.
func pushPulls(ctx context.Context, c cluster, n int, wire, payloadRate float64) (float64, float64) {
	w0, p0, t0 := c.wireBytes(), payload(c, n), time.Now()
	done := 0
	for range PushPullSamples {
		i := rand.IntN(n)
		j := (i + 1 + rand.IntN(n-1)) % n
		jctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if c.pushPull(jctx, i, j) == nil {
			done++
		}
		cancel()
	}
	if done == 0 {
		return 0, 0
	}
	bg := time.Since(t0).Seconds() * float64(n)
	w := (float64(c.wireBytes()-w0) - wire*bg) / float64(done)
	p := (float64(payload(c, n)-p0) - payloadRate*bg) / float64(done)
	return max(w, 0), max(p, 0)
}

// settle waits at least o.Settle, then until memberlist's broadcast
// queues, sampled every second (QueueCheckInterval, see Run), average
// less than one message per instance, or until o.SettleMax. It returns
// the time waited and the last average.
func settle(ctx context.Context, o Options) (Seconds, float64, error) {
	start := time.Now()
	if !sleep(ctx, o.Settle-time.Second) {
		return 0, 0, ctx.Err()
	}
	queued() // drop samples from before the wait
	avg := math.Inf(1)
	for {
		if !sleep(ctx, time.Second+100*time.Millisecond) {
			return 0, 0, ctx.Err()
		}
		if sum, k := queued(); k >= o.Nodes/2 {
			avg = sum / float64(k)
		}
		if d := time.Since(start); avg < 1 || d >= o.SettleMax {
			return seconds(d), avg, nil
		}
	}
}

// quiesce waits, at most d, for the goroutines of a cluster just closed
// to end, so that the next measurement's baseline does not hold them.
func quiesce(d time.Duration) {
	deadline := time.Now().Add(d)
	last, stable := runtime.NumGoroutine(), 0
	for stable < 4 && time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
		g := runtime.NumGoroutine()
		if g >= last {
			stable++
		} else {
			stable = 0
		}
		last = g
	}
}

// watchMemory samples memory until ctx is done, keeping the peak RSS, and
// stops the measurement if this process grows past limit or the machine
// runs short.
func watchMemory(ctx context.Context, stop context.CancelCauseFunc, limit, minAvail uint64, peak *atomic.Uint64) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		rss, _ := RSS()
		if rss > peak.Load() {
			peak.Store(rss)
		}
		avail, err := MemAvailable()
		switch {
		case limit > 0 && rss > limit:
			stop(fmt.Errorf("stopped at the memory limit: RSS %.1f GiB, over %.1f GiB", float64(rss)/(1<<30), float64(limit)/(1<<30)))
			return
		case err == nil && avail < minAvail:
			stop(fmt.Errorf("stopped with the machine short of memory: %.1f GiB available, RSS %.1f GiB", float64(avail)/(1<<30), float64(rss)/(1<<30)))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// missingPairs describes a few of the pairs not yet alive, when few nodes
// are incomplete: "; 3 sees 17 suspect (peer: yes)".
// notAlive counts the ordered pairs not seen alive, by how they are seen.
func notAlive(c cluster, n int) string {
	by := make(map[string]int)
	for i := range n {
		for _, s := range c.missing(i) {
			by[s]++
		}
	}
	var parts []string
	for _, s := range slices.Sorted(maps.Keys(by)) {
		parts = append(parts, fmt.Sprintf("%s %d", s, by[s]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func missingPairs(c cluster, full []bool) string {
	const most = 6
	if len(full)-count(full) > most {
		return ""
	}
	var b strings.Builder
	for i, ok := range full {
		if ok {
			continue
		}
		for j, s := range c.missing(i) {
			peer := ""
			if _, a6 := c.(*agent6); a6 {
				peer = " (WireGuard peer: no)"
				if c.hasPeer(i, j) {
					peer = " (WireGuard peer: yes)"
				}
			}
			fmt.Fprintf(&b, "; %d sees %d %s%s", i, j, s, peer)
		}
	}
	return b.String()
}

// removals measures how long the other instances take to drop one that
// crashes (the last), one cut off from gossip (the one before) and one
// that leaves gracefully (the one before that), one after the other.
func removals(ctx context.Context, c cluster, o Options) (crash, partition, leave *Removal) {
	n := o.Nodes
	crashed, cut, leaving := n-1, n-2, n-3
	others := make([]int, 0, n-3)
	for i := range n - 3 {
		others = append(others, i)
	}
	// back counts the others that list v alive or suspect, or as a
	// WireGuard peer, o.ReturnWait after it was dropped everywhere.
	back := func(r *Removal, v int) {
		if r.Remaining > 0 || !sleep(ctx, o.ReturnWait) {
			return
		}
		for _, i := range others {
			if s := c.state(i, v); s == "alive" || s == "suspect" || c.hasPeer(i, v) {
				r.Returned++
			}
		}
	}

	o.progress("%s, %d nodes: crashing node %d (gossip silenced, then closed: its leave reaches no one)", o.System, n, crashed)
	t := time.Now()
	if err := c.crash(crashed); err != nil {
		o.progress("%s: crash: %v", o.System, err)
	}
	crash = waitGone(ctx, c, o, others, crashed, t)
	back(crash, crashed)
	o.progress("%s, %d nodes: crashed node: %s", o.System, n, removalSummary(o, crash))

	o.progress("%s, %d nodes: cutting node %d off from gossip (its gossip goes silent both ways; it keeps running)", o.System, n, cut)
	c.transport(cut).mute()
	partition = waitGone(ctx, c, o, others, cut, time.Now())
	back(partition, cut)
	o.progress("%s, %d nodes: node cut off from gossip: %s", o.System, n, removalSummary(o, partition))

	o.progress("%s, %d nodes: node %d leaves", o.System, n, leaving)
	t = time.Now()
	if err := c.leave(leaving); err != nil {
		o.progress("%s: leave: %v", o.System, err)
	}
	leave = waitGone(ctx, c, o, others, leaving, t)
	o.progress("%s, %d nodes: leaving node: %s", o.System, n, removalSummary(o, leave))
	return crash, partition, leave
}

// removalSummary describes a removal for the progress log.
func removalSummary(o Options, r *Removal) string {
	var b strings.Builder
	if r.Dead > 0 {
		fmt.Fprintf(&b, "gone from every member list after %.1f s", r.Dead)
	} else {
		b.WriteString("not gone from every member list")
	}
	if o.System == Agent6 {
		if r.PeerGone > 0 {
			fmt.Fprintf(&b, ", from every WireGuard device after %.1f s", r.PeerGone)
		} else {
			b.WriteString(", not gone from every WireGuard device")
		}
	}
	if r.Remaining > 0 {
		fmt.Fprintf(&b, " within %v: %d nodes left, e.g. %s", o.RemovalTimeout, r.Remaining, r.Left)
	}
	if r.Returned > 0 {
		fmt.Fprintf(&b, "; %v later, back as alive or a WireGuard peer on %d nodes", o.ReturnWait, r.Returned)
	}
	return b.String()
}

// waitGone waits until no instance in others sees instance v alive or
// suspect, nor has it as a WireGuard peer.
func waitGone(ctx context.Context, c cluster, o Options, others []int, v int, t0 time.Time) *Removal {
	r := &Removal{}
	seen := make(map[int]bool) // still sees v alive or suspect
	peer := make(map[int]bool) // still has v as a peer
	for _, i := range others {
		seen[i], peer[i] = true, true
	}
	deadline := t0.Add(o.RemovalTimeout)
	for {
		for i := range seen {
			if s := c.state(i, v); s != "alive" && s != "suspect" {
				delete(seen, i)
			}
		}
		for i := range peer {
			if !c.hasPeer(i, v) {
				delete(peer, i)
			}
		}
		now := time.Now()
		if len(seen) == 0 && r.Dead == 0 {
			r.Dead = seconds(now.Sub(t0))
		}
		if len(peer) == 0 && r.PeerGone == 0 {
			r.PeerGone = seconds(now.Sub(t0))
		}
		if (len(seen) == 0 && len(peer) == 0) || now.After(deadline) || !sleep(ctx, 100*time.Millisecond) {
			r.Remaining = max(len(seen), len(peer))
			var left []string
			for _, i := range others {
				if (seen[i] || peer[i]) && len(left) < 5 {
					left = append(left, fmt.Sprintf("%d sees it %s (WireGuard peer: %v)", i, c.state(i, v), c.hasPeer(i, v)))
				}
			}
			r.Left = strings.Join(left, "; ")
			if o.System == Memberlist {
				r.PeerGone = 0
			}
			return r
		}
	}
}

// SuspicionTimeout is memberlist's suspicion timeout for n nodes (the
// Lifeguard minimum; the maximum is SuspicionMaxTimeoutMult times it):
// SuspicionMult × max(1, log10(n)) × ProbeInterval.
func SuspicionTimeout(c *memberlist.Config, n int) time.Duration {
	scale := math.Max(1, math.Log10(math.Max(1, float64(n))))
	return time.Duration(c.SuspicionMult) * time.Duration(scale*1000) * c.ProbeInterval / 1000
}

// PushPullInterval is memberlist's push/pull interval for n nodes: above 32
// nodes it grows by one interval for each doubling.
func PushPullInterval(c *memberlist.Config, n int) time.Duration {
	if n <= 32 {
		return c.PushPullInterval
	}
	return time.Duration(math.Ceil(math.Log2(float64(n))-math.Log2(32))+1) * c.PushPullInterval
}

func sum(v []int) int {
	s := 0
	for _, x := range v {
		s += x
	}
	return s
}

func count(v []bool) int {
	k := 0
	for _, b := range v {
		if b {
			k++
		}
	}
	return k
}

// sleep waits d or until ctx is done; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
