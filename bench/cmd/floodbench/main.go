// Command floodbench measures what a flood of unauthenticated frames costs
// a cluster that joins under it: n embedded nodes (gVisor netstack and
// wireguard-go on 127.0.0.1) join one seed, rounds alternating without and
// with one socket sending -rate admission frames a second to every node
// (half of them a validly signed HELLO of an agent whose credential the
// cluster does not trust, half garbage), for the whole join. For each it
// reports the time to a full mesh, the CPU the process spent meanwhile,
// what was refused at the source's rate limit, and what was dropped for
// overload: the legitimate frames and events lost, which should be none.
// It writes a section of -out. No root needed.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/agent6/agent6/bench/internal/report"
	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/membership"
)

func main() {
	n := flag.Int("n", 30, "cluster `size`, the seed included")
	rounds := flag.Int("rounds", 3, "rounds of each kind, interleaved")
	rate := flag.Int("rate", 10000, "flood `frames` per second, from one socket")
	converge := flag.Duration("converge", 2*time.Minute, "give up on a join after this long")
	out := flag.String("out", "bench/RESULTS.md", "write the results as a section of this `file` (empty: do not)")
	flag.Parse()
	log.SetFlags(log.Ltime)
	log.SetPrefix("floodbench: ")

	var results []result
	for r := range *rounds {
		for _, flood := range []int{0, *rate} {
			res, err := run(*n, flood, *converge)
			if err != nil {
				log.Fatalf("round %d, flood %d/s: %v", r+1, flood, err)
			}
			log.Printf("round %d, flood %d/s: %s", r+1, flood, res)
			results = append(results, res)
		}
	}
	text := table(*n, *rate, results)
	fmt.Print(text)
	if *out != "" {
		if err := report.WriteSection(*out, sectionTitle, text); err != nil {
			log.Fatal(err)
		}
	}
}

const sectionTitle = "## Admission under a flood (floodbench)"

type result struct {
	flood     int           // frames per second offered
	sent      int           // frames sent during the join
	converge  time.Duration // last Up to full mesh
	cpu       time.Duration // process CPU meanwhile
	limited   uint64        // refused at a source's rate, summed over nodes
	untrusted uint64        // refused as untrusted: the first per node after a signature check, repeats by digest
	overload  uint64        // frames or events dropped for a full queue, summed
	malformed uint64
}

func (r result) String() string {
	return fmt.Sprintf("converged in %v, %v CPU, %d sent, %d rate-limited, %d untrusted, %d malformed, %d overload",
		r.converge.Round(time.Millisecond), r.cpu.Round(10*time.Millisecond), r.sent, r.limited, r.untrusted, r.malformed, r.overload)
}

// fastGossip is the tests' memberlist timing: LAN failure detection,
// faster dissemination.
func fastGossip(c *memberlist.Config) {
	c.GossipInterval = 100 * time.Millisecond
	c.PushPullInterval = 5 * time.Second
}

func run(n, flood int, converge time.Duration) (result, error) {
	res := result{flood: flood}
	ca, err := identity.NewCA("example.org", time.Hour, time.Now().Add(-time.Minute))
	if err != nil {
		return res, err
	}
	bundle, err := identity.ParseBundle(ca.CertificatePEM())
	if err != nil {
		return res, err
	}
	loop := netip.MustParseAddr("127.0.0.1")
	var nodes []*node.Node
	var mu sync.Mutex
	defer func() {
		var wg sync.WaitGroup
		for _, nd := range nodes {
			wg.Go(func() { nd.Close() })
		}
		wg.Wait()
	}()
	start := func(name string, join ...string) (*node.Node, error) {
		k, err := identity.GeneratePrivateKey()
		if err != nil {
			return nil, err
		}
		der, err := ca.Issue(identity.IssueRequest{Key: k.Public(), Name: name, TTL: time.Hour}, time.Now())
		if err != nil {
			return nil, err
		}
		nd := &node.Node{Key: k, Credential: der, Bundle: bundle, Join: join,
			Endpoints: []netip.AddrPort{netip.AddrPortFrom(loop, 0)}, TuneGossip: fastGossip, ReconnectInterval: 2 * time.Second}
		if err := nd.Up(context.Background()); err != nil {
			return nil, err
		}
		mu.Lock()
		nodes = append(nodes, nd)
		mu.Unlock()
		return nd, nil
	}
	seed, err := start("seed")
	if err != nil {
		return res, err
	}
	tok, err := seed.Invite()
	if err != nil {
		return res, err
	}

	// The flood starts before the join and lasts until it has converged.
	stop := make(chan struct{})
	var sent atomic.Int64
	var floodWG sync.WaitGroup
	if flood > 0 {
		frames, err := floodFrames()
		if err != nil {
			return res, err
		}
		sock, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loop, 0)))
		if err != nil {
			return res, err
		}
		defer sock.Close()
		floodWG.Go(func() {
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			began := time.Now()
			for i := 0; ; {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				mu.Lock()
				targets := slices.Clone(nodes)
				mu.Unlock()
				for due := min(int(time.Since(began).Seconds()*float64(flood)), i+flood/10); i < due; i++ {
					port, err := targets[i%len(targets)].UDPPort()
					if err == nil {
						sock.WriteToUDPAddrPort(frames[i%len(frames)], netip.AddrPortFrom(loop, port))
					}
				}
				sent.Store(int64(i))
			}
		})
		time.Sleep(time.Second)
	}
	cpu0 := report.ProcessCPU()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n - 1 {
		wg.Go(func() {
			if _, err := start(fmt.Sprintf("agent-%02d", i), tok); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		close(stop)
		floodWG.Wait()
		return res, err
	}
	began := time.Now()
	for !fullMesh(nodes) {
		if time.Since(began) > converge {
			close(stop)
			floodWG.Wait()
			return res, fmt.Errorf("no full mesh after %v", converge)
		}
		time.Sleep(50 * time.Millisecond)
	}
	res.converge = time.Since(began)
	res.cpu = report.ProcessCPU() - cpu0
	close(stop)
	floodWG.Wait()
	res.sent = int(sent.Load())
	for _, nd := range nodes {
		r := nd.Membership().Stats().Refused
		res.limited += r[membership.ReasonRateLimited]
		res.untrusted += r[membership.ReasonUntrusted]
		res.overload += r[membership.ReasonOverload]
		res.malformed += r[membership.ReasonMalformed]
	}
	return res, nil
}

// floodFrames are a validly signed HELLO of an agent from a trust domain
// the cluster does not know, and garbage with an Agent6 header.
func floodFrames() ([][]byte, error) {
	rogue, err := identity.NewCA("evil.example", time.Hour, time.Now().Add(-time.Minute))
	if err != nil {
		return nil, err
	}
	k, err := identity.GeneratePrivateKey()
	if err != nil {
		return nil, err
	}
	der, err := rogue.Issue(identity.IssueRequest{Key: k.Public(), Name: "mallory", TTL: time.Hour}, time.Now())
	if err != nil {
		return nil, err
	}
	rec, err := membership.SignAgentRecord(k, 1, der, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}, time.Now())
	if err != nil {
		return nil, err
	}
	hello, err := membership.HelloFrame(k, rec, time.Now())
	if err != nil {
		return nil, err
	}
	return [][]byte{hello, {0xa6, 2, 1, 0, 0, 0}}, nil
}

func fullMesh(nodes []*node.Node) bool {
	for _, nd := range nodes {
		alive := map[netip.Addr]bool{}
		for _, m := range nd.Members() {
			if m.State == "alive" || m.State == "suspect" {
				alive[m.Addr] = true
			}
		}
		for _, o := range nodes {
			if o != nd && !alive[o.Addr()] {
				return false
			}
		}
	}
	return true
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func table(n, rate int, results []result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\n", sectionTitle)
	fmt.Fprintf(&b, "`%s` — %s, %s, %.0f GiB, load %s, agent6 %s, %s.\n\n",
		report.Command(), report.CPUModel(), report.Kernel(), report.MemTotalGiB(), report.LoadAvg(), report.Agent6Version(), time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, "%d embedded nodes join one seed on 127.0.0.1, rounds interleaved without and with a flood of %d frames a second from one socket (a validly signed HELLO of an untrusted agent, and garbage), sent to every node for the whole join. Sums over the nodes: rate-limited frames cost no signature check; of the untrusted, only the first at each node had its signature and credential checked, the rest were refused by the record's digest; overload counts what a full queue dropped, legitimate or not.\n\n", n, rate)
	b.WriteString("| round | flood (frames/s) | sent | converged (s) | CPU (s) | rate-limited | untrusted | malformed | overload (lost) |\n|---|---|---|---|---|---|---|---|---|\n")
	var quiet, flooded, qcpu, fcpu []time.Duration
	for i, r := range results {
		fmt.Fprintf(&b, "| %d | %d | %d | %.2f | %.1f | %d | %d | %d | %d |\n", i/2+1, r.flood, r.sent, r.converge.Seconds(), r.cpu.Seconds(), r.limited, r.untrusted, r.malformed, r.overload)
		if r.flood == 0 {
			quiet, qcpu = append(quiet, r.converge), append(qcpu, r.cpu)
		} else {
			flooded, fcpu = append(flooded, r.converge), append(fcpu, r.cpu)
		}
	}
	if len(quiet) > 0 && len(flooded) > 0 {
		fmt.Fprintf(&b, "\nMedians: converged %.2f s without the flood, %.2f s with it (%.2f×); CPU %.1f s and %.1f s (%.2f×).\n",
			median(quiet).Seconds(), median(flooded).Seconds(), median(flooded).Seconds()/median(quiet).Seconds(),
			median(qcpu).Seconds(), median(fcpu).Seconds(), median(fcpu).Seconds()/median(qcpu).Seconds())
	}
	return b.String()
}
