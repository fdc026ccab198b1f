package main

import (
	"github.com/agent6/agent6/bench/internal/report"

	"bytes"
	"debug/buildinfo"
	"fmt"
	"math"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"
)

// sectionTitle heads netbench's section of bench/RESULTS.md.
const sectionTitle = "# Agent6 network benchmark"

// row is one line of the results table: a figure for each path.
type row struct {
	label  string
	format string             // for one value
	values map[string]float64 // by tunnel key; absent when not measured
	ratios bool               // whether agent6's ratios mean anything
}

// rows computes the table from the samples: medians, but the sum of errors.
func (b *bench) rows() []row {
	var rows []row
	// perTest collects f of each successful sample of test key, by tunnel.
	perTest := func(key string, f func(sample) (float64, bool)) map[string][]float64 {
		m := make(map[string][]float64)
		for _, s := range b.samples {
			if s.Test != key || s.Error != "" {
				continue
			}
			if v, ok := f(s); ok {
				m[s.Tunnel] = append(m[s.Tunnel], v)
			}
		}
		return m
	}
	medians := func(m map[string][]float64) map[string]float64 {
		out := make(map[string]float64)
		for k, v := range m {
			out[k] = median(v)
		}
		return out
	}
	tunneled := func(s sample) bool { return s.Tunnel != "raw" }

	for _, tc := range tests {
		if tc.streams == 0 {
			continue
		}
		rows = append(rows, row{tc.label + " (Gbit/s)", "%.2f", medians(perTest(tc.key, func(s sample) (float64, bool) {
			return s.Gbps, true
		})), true})
	}
	flow := func(f func(s sample) float64) map[string]float64 {
		return medians(perTest("smallflow", func(s sample) (float64, bool) { return f(s), true }))
	}
	rows = append(rows,
		row{fmt.Sprintf("Small flows, %d in flight (conn/s)", b.conc), "%.0f",
			flow(func(s sample) float64 { return s.Flow.ConnsPerSec }), true},
		row{"Small flows, p50 latency (ms)", "%.3f", flow(func(s sample) float64 { return s.Flow.P50Ms }), true},
		row{"Small flows, p99 latency (ms)", "%.3f", flow(func(s sample) float64 { return s.Flow.P99Ms }), true},
	)
	errs := make(map[string]float64)
	for tk, v := range perTest("smallflow", func(s sample) (float64, bool) { return float64(s.Flow.Errors), true }) {
		for _, e := range v {
			errs[tk] += e
		}
	}
	rows = append(rows, row{"Small flows, failed connections (all runs)", "%.0f", errs, false})

	for _, tc := range tests {
		if tc.streams == 0 {
			continue
		}
		rows = append(rows, row{"Tunnel CPU, " + tc.label + " (CPU s/GB)", "%.2f",
			medians(perTest(tc.key, func(s sample) (float64, bool) {
				return s.CPUSeconds / (float64(s.Bytes) / 1e9), tunneled(s)
			})), true})
	}
	rows = append(rows, row{"Tunnel CPU, TCP, 4 streams, A→B (% of one core)", "%.0f",
		medians(perTest("tcp4-ab", func(s sample) (float64, bool) {
			return 100 * s.CPUSeconds / s.WallSeconds, tunneled(s)
		})), true})
	rows = append(rows, row{"Tunnel CPU, small flows (CPU ms per 1000 conns)", "%.1f",
		medians(perTest("smallflow", func(s sample) (float64, bool) {
			return 1e6 * s.CPUSeconds / float64(max(s.Flow.Connections, 1)), tunneled(s)
		})), true})
	rss := make(map[string]float64)
	for k, v := range b.rss {
		rss[k] = float64(v) / (1 << 20)
	}
	rows = append(rows, row{"Peak RSS of one tunnel process (MiB)", "%.1f", rss, true})
	return rows
}

// report renders the results as Markdown.
func (b *bench) report() string {
	var w bytes.Buffer
	fmt.Fprintf(&w, "%s\n\n", sectionTitle)
	fmt.Fprintf(&w, "- Date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&w, "- Command: %s\n", report.Command())
	fmt.Fprintf(&w, "- Machine: %d CPUs (`nproc`), %s, kernel %s\n", runtime.NumCPU(), report.CPUModel(), report.Kernel())
	fmt.Fprintf(&w, "- Load average (1, 5, 15 min) at start: %s; at end: %s\n", b.loadStart, report.LoadAvg())
	fmt.Fprintf(&w, "- Software: %s, %s, wireguard-go %s, agent6 %s\n",
		runtime.Version(), firstLine("iperf3", "--version"),
		moduleVersion(b.binPath("wireguard-go"), "golang.zx2c4.com/wireguard"), report.Agent6Version())
	fmt.Fprintf(&w, "\n")
	fmt.Fprintf(&w, "Two network namespaces, A and B, joined by one veth pair (10.99.0.1/24 and 10.99.0.2/24, MTU 1500). ")
	fmt.Fprintf(&w, "Paths from A to B: *raw veth*, TCP over IPv4 on the veth; *wireguard-go*, the reference userspace WireGuard "+
		"(`wireguard-go -f`, configured with `wg set`) between fd00:a6::1 and fd00:a6::2; *agent6*, the sidecar "+
		"(`agent6 up`) between the two agents' derived addresses. Both tunnels use MTU %d and run over UDP on the veth.\n\n", b.mtu)
	fmt.Fprintf(&w, "Each figure is the median of %s. The paths run side by side and the runs are interleaved, test by test, "+
		"in rotating order. TCP: `iperf3 -c ADDR -t %d -P {1,4} [-R] -J`, client in A, server in B, the receiver's rate. "+
		"Small flows: `smallflow`, one new TCP connection per request (1 KiB each way, server closes), %d in flight for %v; "+
		"latency is from dial to the server's close. Tunnel CPU is the user+system time of both tunnel processes "+
		"(A's and B's, from /proc/PID/stat) during the run, per GB received (10^9 bytes); peak RSS is the larger VmHWM of the two.\n\n",
		plural(b.repeat, "run"), b.secs, b.conc, b.flowDur)

	var cols, labels []string
	for _, k := range tunnelKeys {
		if slices.Contains(b.keys, k) {
			cols = append(cols, k)
			labels = append(labels, tunnelLabels[k])
		}
	}
	withRatios := slices.Contains(cols, "agent6")
	header := append([]string{"Figure"}, labels...)
	if withRatios {
		if slices.Contains(cols, "wireguard-go") {
			header = append(header, "agent6 ÷ wireguard-go")
		}
		if slices.Contains(cols, "raw") {
			header = append(header, "agent6 ÷ raw")
		}
	}
	fmt.Fprintf(&w, "| %s |\n|%s\n", strings.Join(header, " | "), strings.Repeat(" --- |", len(header)))
	for _, r := range b.rows() {
		cells := []string{r.label}
		for _, k := range cols {
			cells = append(cells, cell(r, k))
		}
		if withRatios {
			for _, den := range []string{"wireguard-go", "raw"} {
				if slices.Contains(cols, den) {
					cells = append(cells, ratio(r, "agent6", den))
				}
			}
		}
		fmt.Fprintf(&w, "| %s |\n", strings.Join(cells, " | "))
	}

	fmt.Fprintf(&w, "\n## Runs\n\nEvery run, in order: throughput in Gbit/s, or small-flow conn/s.\n\n")
	fmt.Fprintf(&w, "| Test | %s |\n|%s\n", strings.Join(labels, " | "), strings.Repeat(" --- |", len(labels)+1))
	for _, tc := range tests {
		cells := []string{tc.label}
		for _, k := range cols {
			var vs []string
			for _, s := range b.samples {
				if s.Test != tc.key || s.Tunnel != k {
					continue
				}
				switch {
				case s.Error != "":
					vs = append(vs, "fail")
				case s.Flow != nil:
					vs = append(vs, fmt.Sprintf("%.0f", s.Flow.ConnsPerSec))
				default:
					vs = append(vs, fmt.Sprintf("%.2f", s.Gbps))
				}
			}
			if len(vs) == 0 {
				vs = []string{"—"}
			}
			cells = append(cells, strings.Join(vs, ", "))
		}
		fmt.Fprintf(&w, "| %s |\n", strings.Join(cells, " | "))
	}
	if len(b.failures) > 0 {
		fmt.Fprintf(&w, "\n## Failures\n\n")
		for _, f := range b.failures {
			fmt.Fprintf(&w, "- %s\n", strings.ReplaceAll(strings.TrimSpace(f), "\n", " "))
		}
	}
	return w.String()
}

func cell(r row, k string) string {
	v, ok := r.values[k]
	if !ok || math.IsNaN(v) || math.IsInf(v, 0) {
		return "—"
	}
	return fmt.Sprintf(r.format, v)
}

func ratio(r row, num, den string) string {
	n, ok1 := r.values[num]
	d, ok2 := r.values[den]
	if !r.ratios || !ok1 || !ok2 || d == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", n/d)
}

// median returns the median of v, which must not be empty.
func median(v []float64) float64 {
	v = slices.Sorted(slices.Values(v))
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func firstLine(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return name + " (version unknown)"
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

// moduleVersion returns the version of module path built into the binary.
func moduleVersion(binary, path string) string {
	bi, err := buildinfo.ReadFile(binary)
	if err != nil {
		return "(not built)"
	}
	for _, m := range append([]*debug.Module{&bi.Main}, bi.Deps...) {
		if m.Path == path {
			if m.Version == "" || m.Version == "(devel)" {
				return "(devel, this tree)"
			}
			return m.Version
		}
	}
	return "(unknown)"
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
