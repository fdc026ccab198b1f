// Command netbench measures, in one run and on one veth pair between two
// network namespaces, three paths from namespace A to namespace B: the raw
// veth, the reference wireguard-go, and the agent6 sidecar. For each it
// measures iperf3 TCP throughput (1 and 4 streams, each direction), the rate
// and latency of short TCP connections (smallflow), and the tunnel
// processes' CPU time per byte and peak RSS. It prints a table of medians,
// with agent6's ratios to the other two, and writes it to -out.
//
// All tunnels run side by side and the measurements are interleaved, test by
// test, so that drift in a noisy machine touches each path alike.
//
// It needs root, iproute2 (ip, ss), ping, iperf3 and wireguard-tools (wg),
// and the binaries make bench builds into -bin: agent6, wireguard-go and
// smallflow. Raw output and process logs go to -logs.
package main

import (
	"github.com/agent6/agent6/bench/internal/report"

	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/agent6/agent6/bench/smallflow"
	"github.com/agent6/agent6/internal/netns"
)

const (
	iperfPort = 5201
	flowPort  = 9000
)

func main() {
	b := &bench{}
	flag.StringVar(&b.bin, "bin", "bin", "`dir`ectory holding agent6, wireguard-go and smallflow")
	out := flag.String("out", "bench/RESULTS.md", "write the results to this `file` (empty: do not)")
	logs := flag.String("logs", "bench/out", "keep raw results and logs in a new directory under this `dir`")
	flag.IntVar(&b.secs, "time", 5, "`seconds` of each iperf3 run")
	flag.IntVar(&b.repeat, "repeat", 3, "runs of each test on each path; the report gives the median")
	flag.DurationVar(&b.flowDur, "flow-time", 5*time.Second, "duration of each smallflow run")
	flag.IntVar(&b.conc, "concurrency", 16, "smallflow connections in flight")
	flag.IntVar(&b.mtu, "mtu", 1420, "MTU of both tunnels")
	only := flag.String("tunnels", strings.Join(tunnelKeys, ","), "comma-separated paths to measure")
	timeout := flag.Duration("timeout", 15*time.Minute, "abort the whole run after this long")
	flag.Parse()
	log.SetFlags(log.Ltime)
	log.SetPrefix("netbench: ")

	b.keys = strings.Split(*only, ",")
	for _, k := range b.keys {
		if !slices.Contains(tunnelKeys, k) {
			log.Fatalf("-tunnels: unknown path %q, want some of %v", k, tunnelKeys)
		}
	}
	if b.secs < 1 || b.repeat < 1 || b.conc < 1 || b.flowDur <= 0 {
		log.Fatal("-time, -repeat, -concurrency and -flow-time must be positive")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	b.logDir = filepath.Join(*logs, time.Now().Format("20060102-150405"))
	err := b.run(ctx, *out)
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		err = fmt.Errorf("aborted after -timeout %v", *timeout)
	case ctx.Err() != nil:
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
	bin     string
	keys    []string
	secs    int
	repeat  int
	flowDur time.Duration
	conc    int
	mtu     int
	logDir  string

	tmp       string           // key files, configurations and sockets
	pair      *netns.Pair      // the topology
	procs     []*proc          // every program started, stopped in reverse order
	iperfSrv  *proc            // the iperf3 server in B
	failures  []string         // what went wrong, for the report
	tunnels   []*tunnel        // the paths that came up, in report order
	samples   []sample         // every measurement
	rss       map[string]int64 // peak RSS by tunnel key
	loadStart string           // /proc/loadavg when the run began
}

// test is one measurement made on each path.
type test struct {
	key     string
	label   string
	streams int  // iperf3 parallel streams; 0 for smallflow
	reverse bool // iperf3 -R: B sends to A
}

var tests = []test{
	{"tcp1-ab", "TCP, 1 stream, A→B", 1, false},
	{"tcp1-ba", "TCP, 1 stream, B→A", 1, true},
	{"tcp4-ab", "TCP, 4 streams, A→B", 4, false},
	{"tcp4-ba", "TCP, 4 streams, B→A", 4, true},
	{"smallflow", "Small flows", 0, false},
}

// sample is one measurement of one test on one path.
type sample struct {
	Tunnel      string            `json:"tunnel"`
	Test        string            `json:"test"`
	Rep         int               `json:"rep"`
	Error       string            `json:"error,omitempty"`
	Gbps        float64           `json:"gbps,omitempty"`
	Bytes       int64             `json:"bytes,omitempty"`
	WallSeconds float64           `json:"wall_seconds"`
	CPUSeconds  float64           `json:"tunnel_cpu_seconds"`
	Flow        *smallflow.Result `json:"smallflow,omitempty"`
}

func (b *bench) run(ctx context.Context, out string) (err error) {
	if err := netns.Available(); err != nil {
		return err
	}
	if err := os.MkdirAll(b.logDir, 0o755); err != nil {
		return err
	}
	if b.tmp, err = os.MkdirTemp("", "a6bench-"); err != nil {
		return err
	}
	defer os.RemoveAll(b.tmp)
	log.Printf("logs and raw results in %s", b.logDir)
	b.loadStart = report.LoadAvg()

	if b.pair, err = netns.NewPair(ctx, "a6b"); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.pair.Close()) }()
	defer b.stopAll()
	log.Printf("namespaces %s (%v) and %s (%v)", b.pair.A.Name, b.pair.A.Addr, b.pair.B.Name, b.pair.B.Addr)

	if err := b.startServers(ctx); err != nil {
		return err
	}
	for _, k := range tunnelKeys {
		if !slices.Contains(b.keys, k) {
			continue
		}
		t, err := b.setupTunnel(ctx, k)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			b.fail("%s: setup: %v", k, err)
			continue
		}
		log.Printf("%s up, B is %v", tunnelLabels[k], t.target)
		b.tunnels = append(b.tunnels, t)
	}
	if len(b.tunnels) == 0 {
		return errors.New("no path came up")
	}

	for rep := range b.repeat {
		for _, tc := range tests {
			for j := range b.tunnels {
				// Rotate the order, so no path always runs first.
				t := b.tunnels[(j+rep)%len(b.tunnels)]
				s := b.measure(ctx, t, tc, rep)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				b.samples = append(b.samples, s)
				log.Printf("run %d/%d %-20s %-13s %s", rep+1, b.repeat, tc.label, tunnelLabels[t.key], s.summary())
			}
		}
	}

	b.rss = make(map[string]int64)
	for _, t := range b.tunnels {
		if len(t.procs) == 0 {
			continue
		}
		if b.rss[t.key], err = peakRSS(t.pids()); err != nil {
			b.fail("%s: peak RSS: %v", t.key, err)
		}
	}

	raw, err := json.MarshalIndent(b.samples, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.logDir, "samples.json"), raw, 0o644); err != nil {
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
	if len(b.failures) > 0 {
		return fmt.Errorf("%d failures, listed in the report", len(b.failures))
	}
	return nil
}

// fail records a failure for the report and logs it.
func (b *bench) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.failures = append(b.failures, msg)
	log.Print(msg)
}

// binPath returns the absolute path of a program in -bin.
func (b *bench) binPath(name string) string {
	p, err := filepath.Abs(filepath.Join(b.bin, name))
	if err != nil {
		return filepath.Join(b.bin, name)
	}
	return p
}

// start starts a program inside ns and registers it for stopAll.
func (b *bench) start(ctx context.Context, ns *netns.NS, name string, env []string, prog string, args ...string) (*proc, error) {
	p, err := startProc(ctx, ns, b.logDir, name, env, prog, args...)
	if err != nil {
		return nil, err
	}
	b.procs = append(b.procs, p)
	return p, nil
}

// stopAll stops every program started, last first.
func (b *bench) stopAll() {
	for _, p := range slices.Backward(b.procs) {
		if err := p.Stop(); err != nil {
			log.Printf("stop: %v", err)
		}
	}
	b.procs = nil
}

// startServers starts the iperf3 and smallflow servers in B, listening on
// every address, and waits until they listen.
func (b *bench) startServers(ctx context.Context) error {
	if err := b.startIperfServer(ctx); err != nil {
		return err
	}
	p, err := b.start(ctx, b.pair.B, "smallflow-server", nil, b.binPath("smallflow"),
		"-listen", ":"+strconv.Itoa(flowPort))
	if err != nil {
		return err
	}
	return poll(ctx, 10*time.Second, "smallflow server", p, listening(b.pair.B, flowPort))
}

// startIperfServer starts the iperf3 server in B, stopping the previous one
// if there is one.
func (b *bench) startIperfServer(ctx context.Context) error {
	if b.iperfSrv != nil {
		if err := b.iperfSrv.Stop(); err != nil {
			log.Printf("restarting iperf3 server: %v", err)
		}
	}
	p, err := b.start(ctx, b.pair.B, "iperf3-server", nil, "iperf3", "-s", "-p", strconv.Itoa(iperfPort))
	if err != nil {
		return err
	}
	b.iperfSrv = p
	return poll(ctx, 10*time.Second, "iperf3 server", p, listening(b.pair.B, iperfPort))
}

// measure runs one test on one path from A, sampling the tunnel's CPU time
// around it. A failed iperf3 run is retried once, with a fresh server.
func (b *bench) measure(ctx context.Context, t *tunnel, tc test, rep int) sample {
	s := sample{Tunnel: t.key, Test: tc.key, Rep: rep + 1}
	for attempt := 0; ; attempt++ {
		err := b.measureOnce(ctx, t, tc, &s)
		if err == nil {
			s.Error = ""
			return s
		}
		s.Error = err.Error()
		if ctx.Err() != nil {
			return s
		}
		if tc.streams == 0 || attempt > 0 {
			b.fail("%s, %s, run %d: %v", t.key, tc.key, s.Rep, err)
			return s
		}
		log.Printf("%s, %s, run %d: %v; retrying with a new iperf3 server", t.key, tc.key, s.Rep, err)
		if err := b.startIperfServer(ctx); err != nil {
			b.fail("iperf3 server: %v", err)
			return s
		}
	}
}

func (b *bench) measureOnce(ctx context.Context, t *tunnel, tc test, s *sample) error {
	var args []string
	var limit time.Duration
	if tc.streams == 0 {
		args = []string{b.binPath("smallflow"), "-connect", netip.AddrPortFrom(t.target, flowPort).String(),
			"-c", strconv.Itoa(b.conc), "-d", b.flowDur.String()}
		limit = b.flowDur + 30*time.Second
	} else {
		args = []string{"iperf3", "-c", t.target.String(), "-p", strconv.Itoa(iperfPort),
			"-t", strconv.Itoa(b.secs), "-P", strconv.Itoa(tc.streams), "--connect-timeout", "5000", "-J"}
		if tc.reverse {
			args = append(args, "-R")
		}
		limit = time.Duration(b.secs)*time.Second + 30*time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()

	pids := t.pids()
	cpu0, err := cpuSeconds(pids)
	if err != nil {
		return err
	}
	start := time.Now()
	cmd := b.pair.A.Command(ctx, args[0], args[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, runErr := cmd.Output()
	s.WallSeconds = time.Since(start).Seconds()
	cpu1, err := cpuSeconds(pids)
	if err != nil {
		return err
	}
	s.CPUSeconds = cpu1 - cpu0
	name := fmt.Sprintf("%s-%s-%d.json", tc.key, t.key, s.Rep)
	if err := os.WriteFile(filepath.Join(b.logDir, name), out, 0o644); err != nil {
		return err
	}

	if tc.streams == 0 {
		if runErr != nil {
			return fmt.Errorf("smallflow: %w: %s", runErr, strings.TrimSpace(stderr.String()))
		}
		var r smallflow.Result
		if err := json.Unmarshal(out, &r); err != nil {
			return fmt.Errorf("smallflow output: %w", err)
		}
		s.Flow = &r
		return nil
	}
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				Bytes         int64   `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return fmt.Errorf("iperf3: %v, output: %w %s", runErr, err, strings.TrimSpace(stderr.String()))
	}
	if r.Error != "" || runErr != nil {
		return fmt.Errorf("iperf3: %v: %s", runErr, r.Error)
	}
	s.Bytes = r.End.SumReceived.Bytes
	s.Gbps = r.End.SumReceived.BitsPerSecond / 1e9
	if s.Bytes == 0 {
		return errors.New("iperf3: no bytes received")
	}
	return nil
}

// summary is a one-line account of the sample for the progress log.
func (s sample) summary() string {
	switch {
	case s.Error != "":
		return "failed: " + s.Error
	case s.Flow != nil:
		return fmt.Sprintf("%.0f conn/s, p50 %.3f ms, p99 %.3f ms, %d errors, tunnel CPU %.2f s",
			s.Flow.ConnsPerSec, s.Flow.P50Ms, s.Flow.P99Ms, s.Flow.Errors, s.CPUSeconds)
	}
	return fmt.Sprintf("%.2f Gbit/s, tunnel CPU %.2f s", s.Gbps, s.CPUSeconds)
}
