package overlay

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/internal/netns"
)

// NAT traversal figures (root; `go test ./overlay -run '^$' -bench NAT
// -benchtime 1x`). Each reports medians and 99th percentiles of several
// tries as custom metrics; the machine is shared, so they are noisy.

const tries = 20

func quantiles(d []time.Duration) (median, p99 time.Duration) {
	slices.Sort(d)
	return d[len(d)/2], d[min(len(d)-1, len(d)*99/100)]
}

func report(b *testing.B, name string, d []time.Duration) {
	m, p := quantiles(d)
	b.ReportMetric(float64(m.Microseconds())/1000, name+"-median-ms")
	b.ReportMetric(float64(p.Microseconds())/1000, name+"-p99-ms")
}

// natWorld is a topology for the benchmarks: a public relay node, a
// public host, two homes of each kind.
type natWorld struct {
	in       *netns.Internet
	eimA     *netns.Home
	eimB     *netns.Home
	edmA     *netns.Home
	edmB     *netns.Home
	pub      *netns.NS
	r        *natNode
	members  sync.Map
	turn     *coturn
	relayCfg *PathsConfig
}

func newNATWorld(b *testing.B, ctx context.Context) *natWorld {
	w := &natWorld{in: newInternet(b, ctx)}
	w.eimA = addHome(b, ctx, w.in, "ia", netns.EndpointIndependent)
	w.eimB = addHome(b, ctx, w.in, "ib", netns.EndpointIndependent)
	w.edmA = addHome(b, ctx, w.in, "da", netns.EndpointDependent)
	w.edmB = addHome(b, ctx, w.in, "db", netns.EndpointDependent)
	w.pub = addPublic(b, ctx, w.in, "p")
	w.r = startNAT(b, addPublic(b, ctx, w.in, "r"), natOpts{admitted: func(k identity.WGPublicKey) bool { _, ok := w.members.Load(k); return ok }})
	w.turn = startCoturn(b, ctx, w.in.Core, w.r)
	w.relayCfg = &PathsConfig{Relays: []RelayServer{w.r.server()}}
	return w
}

// pair starts agents in ha and hb with cfg, admitted at the relay.
func (w *natWorld) pair(b *testing.B, ha, hb *netns.NS, o natOpts) (x, y *natNode) {
	x, y = startNAT(b, ha, o), startNAT(b, hb, o)
	w.members.Store(x.pub(), true)
	w.members.Store(y.pub(), true)
	return x, y
}

func flush(b *testing.B, ctx context.Context, homes ...*netns.Home) {
	for _, h := range homes {
		if err := h.FlushConntrack(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNATFirstPacket: time from configuring a fresh pair to the first
// datagram across, handshake included: behind NAT to a public agent
// (direct), both behind endpoint-independent NAT told to punch
// (punched), both behind endpoint-dependent NAT through the member relay
// once bound (relayed).
func BenchmarkNATFirstPacket(b *testing.B) {
	requireNAT(b)
	ctx, cancel := context.WithTimeout(b.Context(), 10*time.Minute)
	defer cancel()
	w := newNATWorld(b, ctx)
	for range b.N {
		var direct, punched, relayed []time.Duration
		for range tries {
			flush(b, ctx, w.eimA, w.eimB, w.edmA, w.edmB)

			a, p := startNAT(b, w.eimA.Host, natOpts{paths: &PathsConfig{}}), startNAT(b, w.pub, natOpts{paths: &PathsConfig{}})
			a.manage(b, p, PeerPaths{Candidates: []netip.AddrPort{p.public()}})
			p.manage(b, a, PeerPaths{})
			direct = append(direct, firstPacket(b, ctx, a, p))
			a.close()
			p.close()

			x, y := w.pair(b, w.eimA.Host, w.eimB.Host, natOpts{paths: &PathsConfig{}})
			rx, ry := x.reflexive(b, ctx, w.r.public()), y.reflexive(b, ctx, w.r.public())
			start := time.Now()
			x.manage(b, y, PeerPaths{Candidates: []netip.AddrPort{ry}})
			y.manage(b, x, PeerPaths{Candidates: []netip.AddrPort{rx}})
			x.paths.Punch(y.pub(), nil)
			y.paths.Punch(x.pub(), nil)
			firstPacket(b, ctx, x, y)
			punched = append(punched, time.Since(start))
			x.close()
			y.close()

			x, y = w.pair(b, w.edmA.Host, w.edmB.Host, natOpts{paths: w.relayCfg})
			waitFor(b, ctx, "bound", func() bool { return x.paths.Local().Relays[0].Bound && y.paths.Local().Relays[0].Bound })
			x.manage(b, y, PeerPaths{})
			y.manage(b, x, PeerPaths{})
			relayed = append(relayed, firstPacket(b, ctx, x, y))
			x.close()
			y.close()
		}
		report(b, "direct", direct)
		report(b, "punched", punched)
		report(b, "relayed", relayed)
	}
}

// BenchmarkNATUpgrade: a pair behind endpoint-independent NAT, relayed,
// learns each other's reflexive addresses (a record update in phase 2):
// time until both use the direct path, by probing alone and with Punch.
func BenchmarkNATUpgrade(b *testing.B) {
	requireNAT(b)
	ctx, cancel := context.WithTimeout(b.Context(), 10*time.Minute)
	defer cancel()
	w := newNATWorld(b, ctx)
	for range b.N {
		var probed, punch []time.Duration
		for i := range 2 * 10 {
			flush(b, ctx, w.eimA, w.eimB)
			x, y := w.pair(b, w.eimA.Host, w.eimB.Host, natOpts{paths: w.relayCfg})
			rx, ry := x.reflexive(b, ctx, w.r.public()), y.reflexive(b, ctx, w.r.public())
			x.manage(b, y, PeerPaths{})
			y.manage(b, x, PeerPaths{})
			firstPacket(b, ctx, x, y)
			waitFor(b, ctx, "relayed", func() bool { return pathOf(x, y).Path == PathRelay && pathOf(y, x).Path == PathRelay })
			start := time.Now()
			x.manage(b, y, PeerPaths{Candidates: []netip.AddrPort{ry}})
			y.manage(b, x, PeerPaths{Candidates: []netip.AddrPort{rx}})
			if i%2 == 1 {
				x.paths.Punch(y.pub(), nil)
				y.paths.Punch(x.pub(), nil)
			}
			waitFor(b, ctx, "direct", func() bool { return pathOf(x, y).Path == PathDirect && pathOf(y, x).Path == PathDirect })
			if i%2 == 1 {
				punch = append(punch, time.Since(start))
			} else {
				probed = append(probed, time.Since(start))
			}
			x.close()
			y.close()
		}
		report(b, "probing", probed)
		report(b, "punch", punch)
	}
}

// BenchmarkNATThroughput: iperf3 between the same two homes (endpoint-
// independent NAT, kernel TUN) direct after punching, through the member
// relay, and through coturn, in one run; the ratios are the figures.
func BenchmarkNATThroughput(b *testing.B) {
	requireNAT(b, "iperf3", "ping")
	ctx, cancel := context.WithTimeout(b.Context(), 10*time.Minute)
	defer cancel()
	w := newNATWorld(b, ctx)
	run := func(cfg *PathsConfig, want PathKind, setup func(x, y *natNode)) float64 {
		flush(b, ctx, w.eimA, w.eimB)
		x, y := w.pair(b, w.eimA.Host, w.eimB.Host, natOpts{tun: true, paths: cfg})
		defer x.close()
		defer y.close()
		setup(x, y)
		pingOverlay(b, ctx, x, y)
		waitFor(b, ctx, string(want), func() bool { return pathOf(x, y).Path == want && pathOf(y, x).Path == want })
		return iperf(b, ctx, x, y, 5)
	}
	for range b.N {
		direct := run(&PathsConfig{}, PathDirect, func(x, y *natNode) {
			rx, ry := x.reflexive(b, ctx, w.r.public()), y.reflexive(b, ctx, w.r.public())
			x.manage(b, y, PeerPaths{Candidates: []netip.AddrPort{ry}})
			y.manage(b, x, PeerPaths{Candidates: []netip.AddrPort{rx}})
			x.paths.Punch(y.pub(), nil)
			y.paths.Punch(x.pub(), nil)
		})
		relay := run(w.relayCfg, PathRelay, func(x, y *natNode) {
			x.manage(b, y, PeerPaths{})
			y.manage(b, x, PeerPaths{})
		})
		turn := run(&PathsConfig{TURN: w.turn.config()}, PathTURN, func(x, y *natNode) {
			waitFor(b, ctx, "TURN allocations", func() bool { return x.paths.Local().TURN.IsValid() && y.paths.Local().TURN.IsValid() })
			x.manage(b, y, PeerPaths{TURN: y.paths.Local().TURN})
			y.manage(b, x, PeerPaths{TURN: x.paths.Local().TURN})
		})
		b.ReportMetric(direct/1e6, "direct-Mbit/s")
		b.ReportMetric(relay/1e6, "relay-Mbit/s")
		b.ReportMetric(turn/1e6, "turn-Mbit/s")
		b.ReportMetric(relay/direct, "relay/direct")
		b.ReportMetric(turn/direct, "turn/direct")
	}
}
