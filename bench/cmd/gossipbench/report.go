package main

import (
	"github.com/agent6/agent6/bench/internal/report"

	"bytes"
	"fmt"
	"maps"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/agent6/agent6/bench/gossip"
)

// sectionTitle starts gossipbench's section of the results file.
const sectionTitle = "# Agent6 gossip benchmark"

// figure is one quantity of the table, read from a result; ok is false
// when the result does not have it.
type figure struct {
	label  string
	format string
	get    func(r *gossip.Result) (v float64, ok bool)
	ratio  bool // whether agent6 ÷ memberlist means something
}

var figures = []figure{
	{"Convergence (s)", "%.2f", func(r *gossip.Result) (float64, bool) {
		return float64(r.Convergence), r.Failure == "" || r.Convergence > 0
	}, true},
	{"Startup, until every node was created (s)", "%.2f", func(r *gossip.Result) (float64, bool) {
		return float64(r.Startup), r.Startup > 0
	}, false},
	{"Join: suspicions raised, all nodes", "%.0f", func(r *gossip.Result) (float64, bool) {
		return float64(r.JoinEvents.Suspect), r.Startup > 0
	}, false},
	{"Join: nodes marked dead, all nodes", "%.0f", func(r *gossip.Result) (float64, bool) {
		return float64(r.JoinEvents.Dead), r.Startup > 0
	}, false},
	{"CPU from the joins to convergence (CPU s)", "%.1f", func(r *gossip.Result) (float64, bool) {
		return float64(r.JoinCPU), r.JoinCPU > 0
	}, true},
	{"WireGuard sessions at convergence (pairs)", "%.0f", func(r *gossip.Result) (float64, bool) {
		return float64(r.Sessions), r.Sessions > 0
	}, false},
	{"Crypto floor: admitting every pair, and those handshakes (CPU s)", "%.1f", func(r *gossip.Result) (float64, bool) {
		return float64(r.CryptoCPU), r.CryptoCPU > 0
	}, false},
	{"Crypto floor on all cores (s)", "%.1f", func(r *gossip.Result) (float64, bool) {
		return float64(r.CryptoCPU) / float64(runtime.GOMAXPROCS(0)), r.CryptoCPU > 0
	}, false},
	{"Settling: convergence to the rest window (s)", "%.0f", func(r *gossip.Result) (float64, bool) {
		return float64(r.Settled), r.Settled > 0
	}, false},
	{"At rest, between push/pulls, sent on the underlay (B/node/s)", "%.0f", func(r *gossip.Result) (float64, bool) {
		return r.WireBytes, r.WireBytes > 0
	}, true},
	{"At rest, between push/pulls, memberlist payload (B/node/s)", "%.0f", func(r *gossip.Result) (float64, bool) {
		return r.PayloadBytes, r.PayloadBytes > 0
	}, true},
	{"One push/pull exchange, both ways, sent on the underlay (KiB)", "%.1f", func(r *gossip.Result) (float64, bool) {
		return r.PushPullWire / 1024, r.PushPullWire > 0
	}, true},
	{"One push/pull exchange, both ways, memberlist payload (KiB)", "%.1f", func(r *gossip.Result) (float64, bool) {
		return r.PushPullPayload / 1024, r.PushPullPayload > 0
	}, true},
	{"**At rest, with a push/pull per node per interval, sent on the underlay (B/node/s)**", "%.0f", func(r *gossip.Result) (float64, bool) {
		return r.WireBytes + r.PushPullWire/float64(r.PushPullInterval), r.WireBytes > 0 && r.PushPullInterval > 0
	}, true},
	{"**At rest, with a push/pull per node per interval, memberlist payload (B/node/s)**", "%.0f", func(r *gossip.Result) (float64, bool) {
		return r.PayloadBytes + r.PushPullPayload/float64(r.PushPullInterval), r.PayloadBytes > 0 && r.PushPullInterval > 0
	}, true},
	{"At rest: suspicions raised, all nodes", "%.0f", func(r *gossip.Result) (float64, bool) {
		return float64(r.RestEvents.Suspect), r.WireBytes > 0
	}, false},
	{"At rest: nodes marked dead, all nodes", "%.0f", func(r *gossip.Result) (float64, bool) {
		return float64(r.RestEvents.Dead), r.WireBytes > 0
	}, false},
	{"At rest, CPU, whole cluster (% of one core)", "%.1f", func(r *gossip.Result) (float64, bool) {
		return 100 * r.RestCPU, r.WireBytes > 0
	}, true},
	{"Heap in use per node (KiB)", "%.0f", func(r *gossip.Result) (float64, bool) {
		return r.HeapPerNode / 1024, r.HeapPerNode > 0
	}, true},
	{"RSS per node (KiB)", "%.0f", func(r *gossip.Result) (float64, bool) {
		return r.RSSPerNode / 1024, r.RSSPerNode > 0
	}, true},
	{"Goroutines per node", "%.0f", func(r *gossip.Result) (float64, bool) {
		return r.GoroutinesPerNode, r.GoroutinesPerNode > 0
	}, true},
	{"Peak RSS of the process (MiB)", "%.0f", func(r *gossip.Result) (float64, bool) {
		return float64(r.PeakRSS) / (1 << 20), r.PeakRSS > 0
	}, false},
}

// report renders the results as a Markdown section.
func (b *bench) report() string {
	var w bytes.Buffer
	fmt.Fprintf(&w, "%s\n\n", sectionTitle)
	fmt.Fprintf(&w, "- Date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&w, "- Command: %s\n", report.Command())
	fmt.Fprintf(&w, "- Machine: %d CPUs (`nproc`), %s, %.0f GiB RAM, kernel %s\n", runtime.NumCPU(), report.CPUModel(), report.MemTotalGiB(), report.Kernel())
	fmt.Fprintf(&w, "- Load average (1, 5, 15 min) at start: %s; at end: %s; the run took %.0f s\n", b.loadStart, b.loadEnd, b.wall.Seconds())
	fmt.Fprintf(&w, "- Software: %s, memberlist %s, agent6 %s\n", runtime.Version(), memberlistVersion(), report.Agent6Version())
	fmt.Fprintf(&w, "- Largest size that converged: %s\n", b.largest())
	fmt.Fprintf(&w, "\n")

	c := memberlist.DefaultLANConfig()
	b.tune(c)
	fmt.Fprintf(&w, "Both systems run in this one process with the same memberlist configuration: %s "+
		"(ProbeInterval %v, ProbeTimeout %v, GossipInterval %v, GossipNodes %d, PushPullInterval %v, SuspicionMult %d, RetransmitMult %d). "+
		"*agent6*: embedded nodes (`node.Node`, a gVisor netstack and a wireguard-go device each, UDP on 127.0.0.1), "+
		"one CA, each node with its own key and credential; gossip runs inside WireGuard. "+
		"*memberlist*: bare `memberlist.Create` instances on 127.0.0.1 (UDP and TCP), no delegates.\n\n",
		tuningName(b.tuning), c.ProbeInterval, c.ProbeTimeout, c.GossipInterval, c.GossipNodes, c.PushPullInterval, c.SuspicionMult, c.RetransmitMult)
	start := "all n−1 others start at once (one goroutine each)"
	if b.wave > 0 {
		start = fmt.Sprintf("the n−1 others start in waves of %d, %v apart (one goroutine each)", b.wave, b.waveGap)
	}
	fmt.Fprintf(&w, "For each size, bare memberlist first, then agent6: the seed starts; then %s, "+
		"each joining through the seed (agent6: `Join: []string{seed.Invite()}`, so `Up` starts the join; "+
		"memberlist: `Create`, then `Join` retried with agent6's backoff, 0.5 s doubling). "+
		"*Convergence* is from that start until every node sees every other node alive (agent6: `Members()` lists it with State \"alive\"; "+
		"memberlist: `Members()` has it with StateAlive), polled every 0.1 s, 16 nodes at a time; *startup* is the part of it until every `Up` or `Create` had returned. "+
		"*Suspicions* and *marked dead* count memberlist's state changes summed over the observing nodes (its go-metrics counters "+
		"`memberlist.msg.suspect` and `memberlist.msg.dead`): one node suspected by the whole cluster counts n−1; no node fails during the join.\n\n", start)
	fmt.Fprintf(&w, "The *crypto floor* is the least CPU time agent6's join spends on cryptography no design can skip, priced at what "+
		"each operation cost on one core of this machine at the start of the run (median of five batches of 200): one X25519 DH %.0f µs "+
		"(x/crypto's `curve25519.ScalarMult`, as wireguard-go calls it), one ephemeral key %.0f µs, one Ed25519 verification %.0f µs. "+
		"Each node admits each other: two signature checks (credential, and record or meta) and the static DH wireguard-go precomputes "+
		"for a new peer; and each pair with a WireGuard session at convergence (both sides list a handshake) did one handshake: 6 DH and "+
		"2 ephemeral keys. Retried and repeated handshakes, certificate parsing, and all the gossip come on top; *on all cores* divides "+
		"by the %d cores, as if nothing else ran. Gossip inside WireGuard does at least the work of bare gossip, so the floor *plus bare "+
		"memberlist's join CPU* is the least time agent6's join could take on this machine, all else free.\n\n",
		us(b.crypto.DH), us(b.crypto.KeyGen), us(b.crypto.Verify), runtime.GOMAXPROCS(0))
	fmt.Fprintf(&w, "Then the cluster settles: at least %v, and until memberlist's broadcast queues (sampled every second through go-metrics, "+
		"`QueueCheckInterval` set to 1 s for both systems) average under one message per node, at most %v; "+
		"until then the join's alive, suspect and dead messages are still being retransmitted. Then it is at rest for %v. "+
		"*Sent on the underlay* is, for agent6, the sum of WireGuard's tx bytes over every peer of every node (UDP payload: gossip with its "+
		"inner IPv6/UDP/TCP headers and TCP ACKs, WireGuard framing, handshakes, keepalives; not the HELLO/ACK control frames, which go "+
		"outside WireGuard), and for memberlist the UDP and TCP payload it wrote; *memberlist payload* is what memberlist itself wrote "+
		"(both systems' memberlist transport is wrapped to count it); both per node and second. *Between push/pulls* is the window "+
		"without its TCP streams (agent6's wire share of them estimated from their payload, scaled like the measured exchanges). "+
		"memberlist schedules a node's first push/pull a whole interval after a random stagger (the interval is %v at 100 nodes: it grows "+
		"with log2 of the size), so few fall in a short window; instead, after the window, %d push/pulls between random pairs "+
		"(`Join` through another node's address; for agent6 `Membership().Join` with its token) measure *one push/pull exchange*, "+
		"less the background, and the total *at rest* adds one exchange per node per interval. *CPU at rest* is the process's "+
		"user and system time in the window.\n\n", b.settle, b.settleMax, b.window, gossip.PushPullInterval(c, 100), gossip.PushPullSamples)
	fmt.Fprintf(&w, "Memory is the growth over the process before the size started (after its goroutines ended): Go heap in use "+
		"and VmRSS, each read after `debug.FreeOSMemory` (a GC that hands what it freed back to the OS, so that the join's "+
		"garbage does not count), divided by the nodes. agent6's heap includes wireguard-go's "+
		"64 KiB message buffers (128 for each of a device's three receive and read routines, about 25 MiB), many never touched, "+
		"so its RSS is the better measure.\n\n")

	// The sizes measured, in order.
	var sizes []int
	for _, r := range b.results {
		if !slices.Contains(sizes, r.Nodes) {
			sizes = append(sizes, r.Nodes)
		}
	}
	find := func(sys string, n int) *gossip.Result {
		for _, r := range b.results {
			if r.System == sys && r.Nodes == n {
				return r
			}
		}
		return nil
	}
	header := []string{"Figure"}
	for _, n := range sizes {
		header = append(header, fmt.Sprintf("%d nodes", n))
	}
	fmt.Fprintf(&w, "| %s |\n|%s\n", strings.Join(header, " | "), strings.Repeat(" --- |", len(header)))
	for _, f := range figures {
		a6 := []string{f.label + ", agent6"}
		ml := []string{f.label + ", memberlist"}
		ra := []string{f.label + ", agent6 ÷ memberlist"}
		for _, n := range sizes {
			va, oka := value(f, find(gossip.Agent6, n))
			vm, okm := value(f, find(gossip.Memberlist, n))
			a6 = append(a6, cellOf(f, find(gossip.Agent6, n), va, oka))
			ml = append(ml, cellOf(f, find(gossip.Memberlist, n), vm, okm))
			if oka && okm && vm != 0 {
				ra = append(ra, fmt.Sprintf("**%.2f×**", va/vm))
			} else {
				ra = append(ra, "—")
			}
		}
		fmt.Fprintf(&w, "| %s |\n| %s |\n", strings.Join(a6, " | "), strings.Join(ml, " | "))
		if f.ratio {
			fmt.Fprintf(&w, "| %s |\n", strings.Join(ra, " | "))
		}
	}
	// The floor with bare memberlist's own work added: gossip inside
	// WireGuard does at least what bare gossip does.
	floor := []string{"Crypto floor plus bare memberlist's join CPU, on all cores (s), agent6"}
	for _, n := range sizes {
		a, m := find(gossip.Agent6, n), find(gossip.Memberlist, n)
		if a != nil && m != nil && a.CryptoCPU > 0 && m.JoinCPU > 0 {
			floor = append(floor, fmt.Sprintf("%.1f", float64(a.CryptoCPU+m.JoinCPU)/float64(runtime.GOMAXPROCS(0))))
		} else {
			floor = append(floor, "—")
		}
	}
	fmt.Fprintf(&w, "| %s |\n", strings.Join(floor, " | "))
	load := []string{"Load average (1, 5, 15 min) before agent6's run"}
	for _, n := range sizes {
		if r := find(gossip.Agent6, n); r != nil {
			load = append(load, r.LoadAvg)
		} else {
			load = append(load, "—")
		}
	}
	fmt.Fprintf(&w, "| %s |\n", strings.Join(load, " | "))

	b.removalReport(&w, c, find)
	b.countersReport(&w, sizes, find)

	var fails []string
	for _, r := range b.results {
		if r.Failure != "" {
			fails = append(fails, fmt.Sprintf("%s, %d nodes: %s", r.System, r.Nodes, r.Failure))
		}
		if r.Failure == "" && r.RestPairs != r.Nodes*(r.Nodes-1) {
			fails = append(fails, fmt.Sprintf("%s, %d nodes: at the end of the rest window only %d of %d pairs were alive",
				r.System, r.Nodes, r.RestPairs, r.Nodes*(r.Nodes-1)))
		}
	}
	fails = append(fails, b.notes...)
	if len(fails) > 0 {
		fmt.Fprintf(&w, "\n## Failures and sizes not tried\n\n")
		for _, f := range fails {
			fmt.Fprintf(&w, "- %s\n", f)
		}
	}
	return w.String()
}

// largest names, for each system, the largest size that converged.
func (b *bench) largest() string {
	var parts []string
	for _, sys := range b.systems {
		best := 0
		for _, r := range b.results {
			if r.System == sys && r.Convergence > 0 {
				best = max(best, r.Nodes)
			}
		}
		if best == 0 {
			parts = append(parts, sys+" none")
		} else {
			parts = append(parts, fmt.Sprintf("%s %d nodes", sys, best))
		}
	}
	return strings.Join(parts, ", ") + fmt.Sprintf(" (sizes tried: %v, up to -max %d)", b.tried(), b.max)
}

// tried lists the sizes measured.
func (b *bench) tried() []int {
	var out []int
	for _, r := range b.results {
		if !slices.Contains(out, r.Nodes) {
			out = append(out, r.Nodes)
		}
	}
	return out
}

func (b *bench) removalReport(w *bytes.Buffer, c *memberlist.Config, find func(string, int) *gossip.Result) {
	a6, ml := find(gossip.Agent6, b.removal), find(gossip.Memberlist, b.removal)
	if a6 == nil {
		a6 = &gossip.Result{}
	}
	if ml == nil {
		ml = &gossip.Result{}
	}
	if a6.Crash == nil && ml.Crash == nil {
		return
	}
	n := b.removal
	susp := gossip.SuspicionTimeout(c, n)
	pp := gossip.PushPullInterval(c, n)
	fmt.Fprintf(w, "\n## Removal at %d nodes\n\n", n)
	fmt.Fprintf(w, "Three nodes are removed in turn, each measured from the moment of removal until every other node shows it neither "+
		"alive nor suspect (agent6: State dead or left; memberlist: no longer in `Members()`) and, for agent6, until no node lists its key "+
		"in `Status().Peers`; each node counts from the first poll that sees it so. %v later, the nodes that list it alive or suspect again, "+
		"or as a WireGuard peer, are counted. "+
		"*Crash*: the node's memberlist transport starts dropping everything, then the node is closed (agent6: its membership is closed, "+
		"so that `Node.Close` sends no LEAVE, then `Node.Close`; memberlist: `Shutdown`), so nothing of it answers, as when the process dies. "+
		"*Cut off from gossip*: the same silence, but the node keeps running: agent6's WireGuard device and UDP socket, where HELLO/ACK "+
		"control frames travel, stay up (as with a broken data path, a wedged memberlist or an MTU black hole). "+
		"*Leave*: `Close()` (agent6: `Leave(1 s)` inside `Node.Close`, which first sends each peer a LEAVE through WireGuard; memberlist: `Leave(1 s)` then `Shutdown`). "+
		"For comparison, memberlist's suspicion timeout at %d nodes is SuspicionMult × max(1, log10 n) × ProbeInterval = %.1f s "+
		"(Lifeguard starts a suspicion at %d× that, %.0f s, and shortens it as other nodes confirm it), and a push/pull interval is %.0f s, "+
		"so suspicion + push/pull = %.0f s.\n\n",
		15*time.Second, n, susp.Seconds(), c.SuspicionMaxTimeoutMult, (time.Duration(c.SuspicionMaxTimeoutMult) * susp).Seconds(), pp.Seconds(), (susp + pp).Seconds())
	fmt.Fprintf(w, "| Removal (s) | agent6 | memberlist | agent6 ÷ memberlist |\n| --- | --- | --- | --- |\n")
	row := func(label string, get func(*gossip.Removal) gossip.Seconds, a6only bool, ra, rm *gossip.Removal) {
		va, vm := "—", "—"
		var fa, fm float64
		if ra != nil {
			fa = float64(get(ra))
			va = removalCell(fa, ra)
		}
		if rm != nil && !a6only {
			fm = float64(get(rm))
			vm = removalCell(fm, rm)
		}
		ratio := "—"
		if fa > 0 && fm > 0 {
			ratio = fmt.Sprintf("**%.2f×**", fa/fm)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", label, va, vm, ratio)
	}
	back := func(label string, ra, rm *gossip.Removal) {
		cell := func(r *gossip.Removal) string {
			if r == nil || r.Remaining > 0 {
				return "—"
			}
			return fmt.Sprintf("%d nodes", r.Returned)
		}
		fmt.Fprintf(w, "| %s | %s | %s | — |\n", label, cell(ra), cell(rm))
	}
	dead := func(r *gossip.Removal) gossip.Seconds { return r.Dead }
	peer := func(r *gossip.Removal) gossip.Seconds { return r.PeerGone }
	row("Crash: every other node sees it dead", dead, false, a6.Crash, ml.Crash)
	row("Crash: its WireGuard peer gone from every node", peer, true, a6.Crash, ml.Crash)
	back("Crash: back, alive or as a peer, 15 s later", a6.Crash, ml.Crash)
	row("Cut off from gossip: every other node sees it dead", dead, false, a6.Partition, ml.Partition)
	row("Cut off from gossip: its WireGuard peer gone from every node", peer, true, a6.Partition, ml.Partition)
	back("Cut off from gossip: back, alive or as a peer, 15 s later", a6.Partition, ml.Partition)
	row("Leave: every other node sees it left", dead, false, a6.Leave, ml.Leave)
	row("Leave: its WireGuard peer gone from every node", peer, true, a6.Leave, ml.Leave)
	for _, x := range []struct {
		what string
		r    *gossip.Removal
	}{{"crashed", a6.Crash}, {"cut-off", a6.Partition}, {"leaving", a6.Leave}} {
		if x.r != nil && x.r.Left != "" {
			fmt.Fprintf(w, "\nagent6, %s node, at the timeout: %s.\n", x.what, x.r.Left)
		}
	}
}

func removalCell(v float64, r *gossip.Removal) string {
	if v > 0 {
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("not within the timeout (%d nodes left)", r.Remaining)
}

func (b *bench) countersReport(w *bytes.Buffer, sizes []int, find func(string, int) *gossip.Result) {
	fmt.Fprintf(w, "\n## agent6 membership counters\n\nSummed over the nodes when the size ended: admissions, HELLO/ACK control frames "+
		"(during the whole run, and in the rest window), removals, catch-ups (push/pulls with an admitted peer whose alive message gossip lost, or with one declared dead a second before), "+
		"refusals by reason, the packets the nodes' filters dropped, by reason, and first WireGuard handshakes "+
		"kept from waiting for the 5 s retry: the peer's crossing initiations held (of which answered, released), ours held (of which superseded, sent late), and initiations redelivered "+
		"(docs/design.md §2).\n\n")
	fmt.Fprintf(w, "| Nodes | Admissions | Control frames | In the rest window | Removals | Catch-ups | Refusals | Filter drops | Peer's crossing initiations held (answered, released) | Ours held (superseded, sent late) | Initiations redelivered |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, n := range sizes {
		r := find(gossip.Agent6, n)
		if r == nil || r.Stats == nil {
			continue
		}
		refused := make(map[string]uint64, len(r.Stats.Refused))
		for k, v := range r.Stats.Refused {
			refused[string(k)] = v
		}
		hs, superseded, redelivered := "—", "—", "—"
		if h := r.Handshakes; h != nil {
			hs = fmt.Sprintf("%d (%d, %d)", h.CrossHeld, h.CrossAnswered, h.CrossReleased)
			superseded = fmt.Sprintf("%d (%d, %d)", h.CrossSuperseded+h.CrossSentLate, h.CrossSuperseded, h.CrossSentLate)
			redelivered = fmt.Sprint(h.Redelivered)
		}
		fmt.Fprintf(w, "| %d | %d | %d | %d | %d | %d | %s | %s | %s | %s | %s |\n", n, r.Stats.Admitted, r.Stats.Hellos, r.RestHellos, r.Stats.Removed, r.Stats.CatchUps, byReason(refused), byReason(r.FilterDrops), hs, superseded, redelivered)
	}
}

func value(f figure, r *gossip.Result) (float64, bool) {
	if r == nil {
		return 0, false
	}
	return f.get(r)
}

func cellOf(f figure, r *gossip.Result, v float64, ok bool) string {
	switch {
	case r == nil:
		return "—"
	case ok:
		return fmt.Sprintf(f.format, v)
	case r.Failure != "" && f.label == figures[0].label:
		return "✗ " + shortFailure(r.Failure)
	}
	return "—"
}

// shortFailure fits a failure in a table cell.
func shortFailure(s string) string {
	s, _, _ = strings.Cut(s, " (")
	return strings.ReplaceAll(s, "|", "/")
}

func tuningName(t string) string {
	if t == "lan" {
		return "`memberlist.DefaultLANConfig()` unchanged (`-gossip lan`)"
	}
	return "`memberlist.DefaultLANConfig()` with node/cluster_test.go's fast timings (`-gossip fast`)"
}

func memberlistVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	for _, m := range bi.Deps {
		if m.Path == "github.com/hashicorp/memberlist" {
			return m.Version
		}
	}
	return "(unknown)"
}

// byReason lists counts as "reason n, ...", by reason; "none" if there are
// none.
func byReason(counts map[string]uint64) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		if counts[k] > 0 {
			out = append(out, fmt.Sprintf("%s %d", k, counts[k]))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
