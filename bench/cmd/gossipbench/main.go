// Command gossipbench measures agent6's membership at scale, in one process
// and without root: for each cluster size it starts n embedded agent6 nodes
// (gVisor netstack and wireguard-go on 127.0.0.1, gossip inside WireGuard)
// and, as the baseline, n bare memberlist instances on 127.0.0.1 with the
// same memberlist configuration. For each it measures the time to a full
// mesh, the bytes sent per node per second at rest, and the memory per
// node; at one size it also measures how long the others take to drop a
// node that crashes, one cut off from gossip and one that leaves. It
// prints a table with agent6's ratios to bare memberlist and writes it, as
// its own section, to -out (replacing the section a previous run wrote).
//
// Sizes are tried in increasing order; after a size fails to converge, or
// its memory would pass -mem, larger ones are not tried. -timeout bounds
// the whole run.
package main

import (
	"github.com/agent6/agent6/bench/internal/report"

	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"math"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/agent6/agent6/bench/gossip"
)

// tunings are the memberlist configurations -gossip may name. Both systems
// get the same one.
var tunings = map[string]func(*memberlist.Config){
	"lan": func(*memberlist.Config) {}, // memberlist.DefaultLANConfig(), unchanged
	"fast": func(c *memberlist.Config) { // node/cluster_test.go's fastGossip
		c.ProbeInterval = 500 * time.Millisecond
		c.ProbeTimeout = 250 * time.Millisecond
		c.GossipInterval = 100 * time.Millisecond
		c.PushPullInterval = 5 * time.Second
		c.SuspicionMult = 3
		c.TCPTimeout = 2 * time.Second
	},
}

func main() {
	b := &bench{}
	sizes := flag.String("sizes", "50,100,200,300,400", "comma-separated cluster `sizes`, tried in increasing order")
	flag.IntVar(&b.max, "max", 400, "largest cluster `size` to try")
	flag.DurationVar(&b.converge, "converge", 2*time.Minute, "give up on a size that has not converged after this long")
	flag.DurationVar(&b.settle, "settle", 5*time.Second, "least wait after convergence before measuring the cluster at rest")
	flag.DurationVar(&b.settleMax, "settle-max", time.Minute, "most wait after convergence for memberlist's broadcast queues to drain")
	flag.DurationVar(&b.window, "window", 10*time.Second, "length of the at-rest window")
	flag.IntVar(&b.wave, "wave", 0, "start the nodes after the seed this many at a time, -wave-gap apart (0: all at once)")
	flag.DurationVar(&b.waveGap, "wave-gap", time.Second, "time between waves")
	flag.IntVar(&b.removal, "removal", 100, "measure crash and leave removal at this `size` (0: do not)")
	flag.DurationVar(&b.removalTimeout, "removal-timeout", time.Minute, "wait at most this long for each removal")
	flag.StringVar(&b.tuning, "gossip", "lan", "memberlist configuration of both systems: lan (DefaultLANConfig) or fast")
	systems := flag.String("systems", "memberlist,agent6", "comma-separated systems to measure, in order")
	memGiB := flag.Float64("mem", defaultMemGiB(), "skip sizes expected to need more than this many `GiB`, and stop one that gets there; by default 16 or two thirds of the machine's memory, whichever is less")
	out := flag.String("out", "bench/RESULTS.md", "write the results as a section of this `file` (empty: do not)")
	logs := flag.String("logs", "bench/out", "keep results.json and agent6's logs in a new directory under this `dir`")
	level := flag.String("log-level", "warn", "level of agent6's node logs: debug, info, warn, error or off")
	flag.StringVar(&b.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to `file`")
	flag.BoolVar(&b.trace, "trace", false, "log every second of each convergence how the pairs not yet alive stand")
	flag.BoolVar(&b.heapProfiles, "heapprofile", false, "write a heap profile of each cluster at rest to the -logs directory")
	debugAddr := flag.String("debug-addr", "", "serve net/http/pprof on this `address` (e.g. localhost:6060) while running")
	timeout := flag.Duration("timeout", 10*time.Minute, "budget for the whole run; sizes that would not fit are skipped")
	flag.Parse()
	log.SetFlags(log.Ltime)
	log.SetPrefix("gossipbench: ")

	var err error
	if b.sizes, err = parseSizes(*sizes, b.max); err != nil {
		log.Fatalf("-sizes: %v", err)
	}
	b.systems = strings.Split(*systems, ",")
	for _, s := range b.systems {
		if s != gossip.Agent6 && s != gossip.Memberlist {
			log.Fatalf("-systems: unknown system %q, want agent6 or memberlist", s)
		}
	}
	if b.tune = tunings[b.tuning]; b.tune == nil {
		log.Fatalf("-gossip %q: want lan or fast", b.tuning)
	}
	if b.converge <= 0 || b.settle < 0 || b.window <= 0 || *memGiB <= 0 {
		log.Fatal("-converge, -window and -mem must be positive, -settle not negative")
	}
	b.memLimit = uint64(*memGiB * (1 << 30))
	if *debugAddr != "" {
		ln, err := net.Listen("tcp", *debugAddr)
		if err != nil {
			log.Fatalf("-debug-addr: %v", err)
		}
		srv := &http.Server{Handler: http.DefaultServeMux}
		go srv.Serve(ln) // lives as long as the process
		log.Printf("pprof on http://%s/debug/pprof/", ln.Addr())
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b.deadline = time.Now().Add(*timeout)
	ctx, cancel := context.WithDeadline(ctx, b.deadline.Add(2*time.Minute)) // the budget is checked between steps
	defer cancel()

	b.logDir = filepath.Join(*logs, time.Now().Format("20060102-150405")+"-gossip")
	err = b.run(ctx, *out, *level)
	switch {
	case err == nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		err = fmt.Errorf("stopped 2 min past the -timeout budget of %v", *timeout)
	case err == nil && ctx.Err() != nil:
		err = errors.New("interrupted")
	}
	if err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

// bench is one benchmark run. Only run's goroutine touches it.
type bench struct {
	// Settings from flags.
	sizes          []int
	systems        []string
	max            int
	converge       time.Duration
	settle         time.Duration
	settleMax      time.Duration
	window         time.Duration
	removal        int
	removalTimeout time.Duration
	wave           int
	waveGap        time.Duration
	tuning         string
	tune           func(*memberlist.Config)
	memLimit       uint64
	deadline       time.Time
	logDir         string
	// Profiles.
	cpuProfile   string
	heapProfiles bool
	trace        bool

	crypto    gossip.CryptoCost
	results   []*gossip.Result
	notes     []string // sizes skipped and why
	loadStart string
	loadEnd   string
	start     time.Time
	wall      time.Duration
}

func parseSizes(s string, most int) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 {
			return nil, fmt.Errorf("%q is not a cluster size (at least 2)", f)
		}
		if n <= most {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) == 0 {
		return nil, fmt.Errorf("no size up to -max %d", most)
	}
	return out, nil
}

func (b *bench) run(ctx context.Context, out, level string) error {
	if err := os.MkdirAll(b.logDir, 0o755); err != nil {
		return err
	}
	logger, closeLog, err := nodeLogger(filepath.Join(b.logDir, "agent6.log"), level)
	if err != nil {
		return err
	}
	defer closeLog()
	log.Printf("results and agent6 logs in %s", b.logDir)
	if b.cpuProfile != "" {
		f, err := os.Create(b.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	b.loadStart, b.start = report.LoadAvg(), time.Now()
	b.crypto = gossip.MeasureCrypto()
	log.Printf("one X25519 DH %v, ephemeral key %v, Ed25519 verification %v", b.crypto.DH, b.crypto.KeyGen, b.crypto.Verify)

	var done []*gossip.Result // agent6's results that converged, in order
	for k, n := range b.sizes {
		if why := b.skip(n, done); why != "" {
			b.note("%d nodes: not tried: %s", n, why)
			continue
		}
		var failed bool
		for _, sys := range b.systems {
			r := gossip.Run(ctx, gossip.Options{
				System:         sys,
				Nodes:          n,
				Tune:           b.tune,
				Wave:           b.wave,
				WaveGap:        b.waveGap,
				Converge:       max(20*time.Second, min(b.converge, time.Until(b.deadline)-b.settle-b.window)),
				Settle:         b.settle,
				SettleMax:      b.settleMax,
				Window:         b.window,
				Removal:        n == b.removal,
				RemovalTimeout: b.removalTimeout,
				MemLimit:       b.memLimit,
				Logger:         logger,
				Progress:       log.Printf,
				Trace:          b.trace,
				Crypto:         b.crypto,
				AtRest:         b.atRest(sys, n),
			})
			b.results = append(b.results, r)
			if r.Failure != "" {
				log.Printf("%s, %d nodes: %s", sys, n, r.Failure)
			}
			if r.Leaked {
				b.note("%s at %d nodes did not close: no further sizes tried", sys, n)
				return b.finish(out)
			}
			if sys == gossip.Agent6 {
				if r.Failure == "" && r.RSSPerNode > 0 {
					done = append(done, r)
				} else if r.Failure != "" {
					failed = true
				}
			}
			runtime.GC()
			debug.FreeOSMemory()
			if ctx.Err() != nil {
				return b.finish(out)
			}
		}
		if failed && k+1 < len(b.sizes) {
			b.note("agent6 failed at %d nodes: %v not tried", n, b.sizes[k+1:])
			break
		}
	}
	return b.finish(out)
}

// skip says why size n is not to be tried, if it is not: it would not fit
// the time left, or its memory, extrapolated from the sizes before it,
// would pass -mem. Per node, agent6 holds a fixed part (wireguard-go's
// buffers, a netstack) and a part per peer, so memory per node at rest is
// fitted as a + b·n; its peak per node (over the RSS before it) is scaled
// with n.
func (b *bench) skip(n int, done []*gossip.Result) string {
	left := time.Until(b.deadline)
	if need := b.settle + b.window + 30*time.Second; left < need {
		return fmt.Sprintf("%.0f s of the -timeout budget left", left.Seconds())
	}
	if len(done) == 0 {
		return ""
	}
	last := done[len(done)-1]
	per := last.RSSPerNode * (0.5 + 0.5*float64(n)/float64(last.Nodes)) // no slope known: half fixed, half per peer
	if len(done) > 1 {
		prev := done[len(done)-2]
		slope := (last.RSSPerNode - prev.RSSPerNode) / float64(last.Nodes-prev.Nodes)
		per = max(last.RSSPerNode, last.RSSPerNode+slope*float64(n-last.Nodes))
	}
	// The peak, not the rest, is what must fit: per node it grows at
	// least with the peers (wireguard-go queues a 64 KiB buffer per packet
	// while a node is behind in a join storm), so the whole at least with
	// n²; it varies from run to run (at 200 nodes 6–12 GiB).
	grown := float64(last.PeakRSS) - float64(min(last.BaseRSS, last.PeakRSS))
	if peak := grown / float64(last.Nodes) * float64(n) / float64(last.Nodes); peak > per {
		per = peak
	}
	if est := per * float64(n); est > float64(b.memLimit) {
		return fmt.Sprintf("would need about %.1f GiB (%.0f MiB per node, extrapolated from %d nodes' rest and peak), over -mem %.0f GiB",
			est/(1<<30), per/(1<<20), last.Nodes, float64(b.memLimit)/(1<<30))
	}
	return ""
}

// defaultMemGiB is 16 GiB, or two thirds of the machine's memory if that
// is less: the watchdog samples memory every 200 ms and closing a cluster
// takes seconds, and a join storm can grow by gigabytes meanwhile — a
// 300-node agent6 run on a 24 GiB machine with a 16 GiB limit was killed
// by the kernel's OOM killer at 24 GiB before the watchdog stopped it
// (which is why sizes are also extrapolated from the last one's peak).
func defaultMemGiB() float64 {
	total, err := gossip.MemTotal()
	if err != nil || total == 0 {
		return 16
	}
	return min(16, math.Floor(float64(total)/(1<<30)*2/3*10)/10)
}

func (b *bench) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.notes = append(b.notes, msg)
	log.Print(msg)
}

// finish writes results.json and the report.
func (b *bench) finish(out string) error {
	b.loadEnd, b.wall = report.LoadAvg(), time.Since(b.start)
	raw, err := json.MarshalIndent(b.results, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.logDir, "results.json"), raw, 0o644); err != nil {
		return err
	}
	text := b.report()
	fmt.Print(text)
	if out != "" {
		if err := report.WriteSection(out, sectionTitle, text); err != nil {
			return err
		}
		log.Printf("wrote %s", out)
	}
	return nil
}

// atRest returns the hook that writes a heap profile of the cluster at
// rest, if -heapprofile asks for one.
func (b *bench) atRest(sys string, n int) func() {
	if !b.heapProfiles {
		return nil
	}
	return func() {
		path := filepath.Join(b.logDir, fmt.Sprintf("heap-%s-%d.pprof", sys, n))
		f, err := os.Create(path)
		if err != nil {
			log.Print(err)
			return
		}
		defer f.Close()
		runtime.GC()
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			log.Print(err)
		}
	}
}

// nodeLogger returns a logger writing agent6's node logs at level to path,
// or nil for "off".
func nodeLogger(path, level string) (*slog.Logger, func(), error) {
	if level == "off" {
		return nil, func() {}, nil
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, nil, fmt.Errorf("-log-level: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, nil, err
	}
	return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: l})), func() { f.Close() }, nil
}
