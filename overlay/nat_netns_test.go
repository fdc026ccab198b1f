package overlay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/internal/netns"
)

// The NAT tests: agents behind real Linux NAT (iptables MASQUERADE) in
// network namespaces, with a member relay and coturn on the "internet".

// requireNAT skips when namespaces, iptables, conntrack or coturn are
// missing, except in CI, where a skip would hide a broken setup.
func requireNAT(tb testing.TB, tools ...string) {
	tb.Helper()
	why := ""
	if err := netns.Available(); err != nil {
		why = err.Error()
	}
	for _, tool := range append([]string{"iptables", "conntrack", "turnserver"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil && why == "" {
			why = tool + " not installed"
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") != "" {
		tb.Fatalf("NAT test cannot run in CI: %s", why)
	}
	tb.Skipf("needs root, network namespaces, iptables, conntrack and coturn: %s", why)
}

// wgPort is every agent's UDP port: one agent per namespace.
const wgPort = 51820

// natNode is an agent (device, Bind, Paths, maybe Relay) in a namespace.
type natNode struct {
	ns    *netns.NS
	key   identity.WGPrivateKey
	bind  *Bind
	dev   *Device
	tnet  *Netstack // netstack backend; nil with a kernel TUN
	paths *Paths
	relay *Relay
}

type natOpts struct {
	tun      bool // kernel TUN "agent6" (for iperf3) instead of a netstack
	paths    *PathsConfig
	admitted func(identity.WGPublicKey) bool // non-nil: a member relay
	log      *slog.Logger
}

func startNAT(tb testing.TB, ns *netns.NS, o natOpts) *natNode {
	tb.Helper()
	k, _ := identity.GeneratePrivateKey()
	n := &natNode{ns: ns, key: k.WireGuard(), bind: NewBind()}
	err := ns.Do(func() error {
		var backend interface{ Close() error }
		addr := n.key.Public().Addr()
		var cfg = Config{PrivateKey: n.key, ListenPort: wgPort, Bind: n.bind, Logger: o.log}
		if o.tun {
			tdev, err := CreateKernelTUN("agent6", 1420, addr)
			if err != nil {
				return err
			}
			backend = tdev
			if n.dev, err = NewDevice(tdev, cfg); err != nil {
				return err
			}
		} else {
			tdev, tnet, err := NewNetstack(addr, 1420)
			if err != nil {
				return err
			}
			backend, n.tnet = tdev, tnet
			if n.dev, err = NewDevice(tdev, cfg); err != nil {
				return err
			}
		}
		_ = backend
		if o.paths != nil {
			pc := *o.paths
			pc.PrivateKey = n.key
			var err error
			if n.paths, err = NewPaths(n.bind, pc); err != nil {
				return err
			}
		}
		if o.admitted != nil {
			var err error
			if n.relay, err = NewRelay(n.bind, RelayConfig{PrivateKey: n.key, Admitted: o.admitted}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(n.close)
	tb.Cleanup(func() {
		if tb.Failed() && n.paths != nil {
			tb.Logf("%s paths: %+v\nstats %+v\nlocal %+v", ns.Name, n.paths.Status(), n.paths.Stats(), n.paths.Local())
		}
		if tb.Failed() && n.relay != nil {
			tb.Logf("%s relay: %+v", ns.Name, n.relay.Stats())
		}
	})
	return n
}

func (n *natNode) close() {
	if n.paths != nil {
		n.paths.Close()
	}
	if n.relay != nil {
		n.relay.Close()
	}
	if n.dev != nil {
		n.dev.Close()
	}
}

func (n *natNode) pub() identity.WGPublicKey { return n.key.Public() }

// public is the node's address on its namespace's link, and the port.
func (n *natNode) public() netip.AddrPort { return netip.AddrPortFrom(n.ns.Addr, wgPort) }

func (n *natNode) server() RelayServer { return RelayServer{Addr: n.public(), PublicKey: n.pub()} }

// manage makes peer a managed WireGuard peer of n with paths pp.
func (n *natNode) manage(tb testing.TB, peer *natNode, pp PeerPaths) {
	tb.Helper()
	pp.PublicKey = peer.pub()
	if err := n.dev.SetPeer(PeerConfig{PublicKey: peer.pub(), Managed: true}); err != nil {
		tb.Fatal(err)
	}
	if err := n.paths.SetPeer(pp); err != nil {
		tb.Fatal(err)
	}
}

// reflexive asks server for n's reflexive address.
func (n *natNode) reflexive(tb testing.TB, ctx context.Context, server netip.AddrPort) netip.AddrPort {
	tb.Helper()
	ap, err := n.bind.STUN(ctx, server)
	if err != nil {
		tb.Fatal(err)
	}
	return ap
}

// firstPacket sends datagrams from a to b over the overlay until one
// arrives, and returns how long that took.
func firstPacket(tb testing.TB, ctx context.Context, a, b *natNode) time.Duration {
	tb.Helper()
	port := uint16(7000 + time.Now().UnixNano()%1000)
	pc, err := b.tnet.ListenUDP(netip.AddrPortFrom(b.pub().Addr(), port))
	if err != nil {
		tb.Fatal(err)
	}
	defer pc.Close()
	c, err := a.tnet.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(b.pub().Addr(), port))
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	got := make(chan time.Time, 1)
	go func() {
		buf := make([]byte, 64)
		pc.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, _, err := pc.ReadFrom(buf); err == nil {
			got <- time.Now()
		}
		close(got)
	}()
	start := time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		c.Write([]byte("hello"))
		select {
		case at, ok := <-got:
			if !ok {
				tb.Fatalf("no datagram from %s to %s", a.ns.Name, b.ns.Name)
			}
			return at.Sub(start)
		case <-ctx.Done():
			tb.Fatalf("no datagram from %s to %s: %v", a.ns.Name, b.ns.Name, ctx.Err())
		case <-tick.C:
		}
	}
}

// transfer sends size bytes over TCP from a to b through the overlay and
// checks they all arrive; during, if set, runs once the transfer is under
// way.
func transfer(tb testing.TB, ctx context.Context, a, b *natNode, size int, during func()) {
	tb.Helper()
	ln, err := b.tnet.ListenTCP(netip.AddrPortFrom(b.pub().Addr(), 9000))
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	recv := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			recv <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		buf := make([]byte, 64<<10)
		total := 0
		for total < size {
			n, err := c.Read(buf)
			total += n
			if err != nil {
				recv <- fmt.Errorf("received %d of %d bytes: %w", total, size, err)
				return
			}
		}
		_, err = c.Write([]byte{1}) // done
		recv <- err
	}()
	c, err := a.tnet.DialTCP(ctx, netip.AddrPortFrom(b.pub().Addr(), 9000))
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	chunk := bytes.Repeat([]byte("agent6"), 10922)
	sent := 0
	for sent < size {
		n := min(len(chunk), size-sent)
		if _, err := c.Write(chunk[:n]); err != nil {
			tb.Fatalf("sent %d of %d bytes: %v", sent, size, err)
		}
		sent += n
		if during != nil && sent >= size/4 {
			during()
			during = nil
		}
	}
	if err := <-recv; err != nil {
		tb.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err != nil {
		tb.Fatalf("no acknowledgement: %v", err)
	}
}

// waitFor polls cond every 20 ms until it holds or ctx ends.
func waitFor(tb testing.TB, ctx context.Context, what string, cond func() bool) {
	tb.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			tb.Fatalf("%s: %v", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func pathOf(n *natNode, peer *natNode) PeerPathStatus {
	st, _ := n.paths.PeerStatus(peer.pub())
	return st
}

// pairBytes is what relay r forwarded between a and b, both ways.
func pairBytes(r *Relay, a, b identity.WGPublicKey) uint64 {
	var total uint64
	for _, p := range r.Pairs() {
		if p.From.Equal(a) && p.To.Equal(b) || p.From.Equal(b) && p.To.Equal(a) {
			total += p.Bytes
		}
	}
	return total
}

// coturn runs Debian's turnserver in ns on ns.Addr:3478 with one
// long-term credential, and waits until it answers STUN from probe.
type coturn struct {
	addr              netip.AddrPort
	user, pass, realm string
	log               bytes.Buffer
	cmd               *exec.Cmd
}

func startCoturn(tb testing.TB, ctx context.Context, ns *netns.NS, probe *natNode) *coturn {
	tb.Helper()
	dir := tb.TempDir()
	c := &coturn{addr: netip.AddrPortFrom(ns.Addr, 3478), user: "agent6", pass: "secret", realm: "agent6.test"}
	conf := strings.Join([]string{
		"listening-ip=" + ns.Addr.String(),
		"relay-ip=" + ns.Addr.String(),
		"listening-port=3478",
		"min-port=49152",
		"max-port=49252",
		"realm=" + c.realm,
		"user=" + c.user + ":" + c.pass,
		"lt-cred-mech",
		"fingerprint",
		"no-tls",
		"no-dtls",
		"no-cli",
		"no-rfc5780",
		"no-software-attribute",
		"userdb=" + filepath.Join(dir, "turndb"),
		"pidfile=" + filepath.Join(dir, "turnserver.pid"),
		"log-file=stdout",
		"simple-log",
	}, "\n") + "\n"
	path := filepath.Join(dir, "turnserver.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		tb.Fatal(err)
	}
	c.cmd = ns.Command(context.Background(), "turnserver", "-c", path)
	var mu sync.Mutex
	c.cmd.Stdout, c.cmd.Stderr = lockedWriter{&mu, &c.log}, lockedWriter{&mu, &c.log}
	if err := c.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		c.cmd.Process.Kill() // by PID
		c.cmd.Wait()
		if tb.Failed() {
			mu.Lock()
			tb.Logf("coturn log:\n%s", c.log.String())
			mu.Unlock()
		}
	})
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := probe.bind.STUN(sctx, c.addr); err != nil {
		tb.Fatalf("coturn does not answer STUN: %v", err)
	}
	return c
}

func (c *coturn) config() *TURNConfig {
	return &TURNConfig{Server: c.addr, Username: c.user, Password: c.pass, Realm: c.realm}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func newInternet(tb testing.TB, ctx context.Context) *netns.Internet {
	tb.Helper()
	in, err := netns.NewInternet(ctx, "a6nat")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { in.Close() })
	return in
}

func addHome(tb testing.TB, ctx context.Context, in *netns.Internet, role string, mode netns.NATMode) *netns.Home {
	tb.Helper()
	h, err := in.AddHome(ctx, role, mode)
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

func addPublic(tb testing.TB, ctx context.Context, in *netns.Internet, role string) *netns.NS {
	tb.Helper()
	ns, err := in.AddPublic(ctx, role)
	if err != nil {
		tb.Fatal(err)
	}
	return ns
}

// An agent behind NAT reaches a public one directly: the public side
// learns the NAT's mapping from the authenticated pings that come from
// it, and both confirm the direct path.
func TestNATPublicDirect(t *testing.T) {
	requireNAT(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	in := newInternet(t, ctx)
	home := addHome(t, ctx, in, "a", netns.EndpointIndependent)
	a := startNAT(t, home.Host, natOpts{paths: &PathsConfig{}})
	p := startNAT(t, addPublic(t, ctx, in, "p"), natOpts{paths: &PathsConfig{}})
	a.manage(t, p, PeerPaths{Candidates: []netip.AddrPort{p.public()}})
	p.manage(t, a, PeerPaths{}) // it knows nothing: a calls
	took := firstPacket(t, ctx, a, p)
	firstPacket(t, ctx, p, a)
	waitFor(t, ctx, "direct path both ways", func() bool {
		return pathOf(a, p).Path == PathDirect && pathOf(p, a).Path == PathDirect
	})
	st := pathOf(p, a)
	if st.Endpoint.Addr() != home.WAN {
		t.Fatalf("public side reaches a at %v, want its router's %v", st.Endpoint, home.WAN)
	}
	t.Logf("first packet behind NAT → public in %v; p sees a at %v, RTT %v", took.Round(time.Millisecond), st.Endpoint, st.RTT)
}

// Two agents behind endpoint-independent NAT, relayed at first, punch
// through when told to at once, and from then on the relay carries none
// of their traffic.
func TestNATHolePunch(t *testing.T) {
	requireNAT(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	in := newInternet(t, ctx)
	ha := addHome(t, ctx, in, "a", netns.EndpointIndependent)
	hb := addHome(t, ctx, in, "b", netns.EndpointIndependent)
	rns := addPublic(t, ctx, in, "r")
	var members sync.Map
	r := startNAT(t, rns, natOpts{admitted: func(k identity.WGPublicKey) bool { _, ok := members.Load(k); return ok }})
	cfg := &PathsConfig{Relays: []RelayServer{r.server()}}
	a, b := startNAT(t, ha.Host, natOpts{paths: cfg}), startNAT(t, hb.Host, natOpts{paths: cfg})
	members.Store(a.pub(), true)
	members.Store(b.pub(), true)
	ra, rb := a.reflexive(t, ctx, r.public()), b.reflexive(t, ctx, r.public())
	if ra.Addr() != ha.WAN || rb.Addr() != hb.WAN {
		t.Fatalf("reflexive addresses %v, %v; want the routers' %v, %v", ra, rb, ha.WAN, hb.WAN)
	}
	a.manage(t, b, PeerPaths{})
	b.manage(t, a, PeerPaths{})
	firstPacket(t, ctx, a, b)
	if pa := pathOf(a, b); pa.Path != PathRelay {
		t.Fatalf("before punching: %+v, want relayed", pa)
	}
	// The coordination message would tell both at once (phase 2).
	start := time.Now()
	if err := a.paths.Punch(b.pub(), []netip.AddrPort{rb}); err != nil {
		t.Fatal(err)
	}
	if err := b.paths.Punch(a.pub(), []netip.AddrPort{ra}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "direct path both ways", func() bool {
		return pathOf(a, b).Path == PathDirect && pathOf(b, a).Path == PathDirect
	})
	t.Logf("punched through in %v: a→b %+v", time.Since(start).Round(time.Millisecond), pathOf(a, b).Endpoint)
	before := pairBytes(r.relay, a.pub(), b.pub())
	const size = 2 << 20
	transfer(t, ctx, a, b, size, nil)
	if after := pairBytes(r.relay, a.pub(), b.pub()); after-before > 4096 {
		t.Fatalf("the relay forwarded %d bytes of a %d-byte transfer after punching", after-before, size)
	}
	if st := pathOf(a, b); st.Path != PathDirect || st.Upgrades == 0 {
		t.Fatalf("after the transfer: %+v", st)
	}
}

// iperf runs iperf3 for secs from a to b's overlay address (kernel TUN
// nodes) and returns the receiver's bits a second.
func iperf(tb testing.TB, ctx context.Context, a, b *natNode, secs int) float64 {
	tb.Helper()
	srv := b.ns.Command(ctx, "iperf3", "-s", "-1", "-B", b.pub().Addr().String())
	var slog bytes.Buffer
	srv.Stdout, srv.Stderr = &slog, &slog
	if err := srv.Start(); err != nil {
		tb.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	var out []byte
	var err error
	for range 20 { // until the server listens
		out, err = a.ns.Run(ctx, "iperf3", "-c", b.pub().Addr().String(), "-t", fmt.Sprint(secs), "-J")
		if err == nil || !strings.Contains(string(out), "connect") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		tb.Fatalf("iperf3: %v\n%s\nserver: %s", err, out, slog.String())
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil || r.End.SumReceived.BitsPerSecond == 0 {
		tb.Fatalf("iperf3 output: %v\n%s", err, out)
	}
	return r.End.SumReceived.BitsPerSecond
}

// pingOverlay pings b's overlay address from a until one answer comes.
func pingOverlay(tb testing.TB, ctx context.Context, a, b *natNode) {
	tb.Helper()
	for ctx.Err() == nil {
		if _, err := a.ns.Run(ctx, "ping", "-6", "-c1", "-W1", b.pub().Addr().String()); err == nil {
			return
		}
	}
	tb.Fatalf("no ping answer from %s: %v", b.ns.Name, ctx.Err())
}

// Both agents behind endpoint-dependent NAT cannot punch through; their
// traffic goes through the member relay, and, with the relay off and
// TURN configured, through coturn; iperf3 runs across both.
func TestNATSymmetricRelayAndTURN(t *testing.T) {
	requireNAT(t, "iperf3", "ping")
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	in := newInternet(t, ctx)
	ha := addHome(t, ctx, in, "a", netns.EndpointDependent)
	hb := addHome(t, ctx, in, "b", netns.EndpointDependent)
	var members sync.Map
	r := startNAT(t, addPublic(t, ctx, in, "r"), natOpts{admitted: func(k identity.WGPublicKey) bool { _, ok := members.Load(k); return ok }})
	turn := startCoturn(t, ctx, in.Core, r)

	cfg := &PathsConfig{Relays: []RelayServer{r.server()}}
	a, b := startNAT(t, ha.Host, natOpts{tun: true, paths: cfg}), startNAT(t, hb.Host, natOpts{tun: true, paths: cfg})
	members.Store(a.pub(), true)
	members.Store(b.pub(), true)
	ra, rb := a.reflexive(t, ctx, turn.addr), b.reflexive(t, ctx, turn.addr)
	a.manage(t, b, PeerPaths{Candidates: []netip.AddrPort{rb}})
	b.manage(t, a, PeerPaths{Candidates: []netip.AddrPort{ra}})
	a.paths.Punch(b.pub(), nil)
	b.paths.Punch(a.pub(), nil)
	pingOverlay(t, ctx, a, b)
	relayed := iperf(t, ctx, a, b, 3)
	if st := pathOf(a, b); st.Path != PathRelay {
		t.Fatalf("a→b: %+v, want the member relay", st)
	}
	if n := pairBytes(r.relay, a.pub(), b.pub()); n < 1<<20 {
		t.Fatalf("the relay forwarded %d bytes", n)
	}
	t.Logf("member relay: iperf3 %.0f Mbit/s", relayed/1e6)

	// The relay off, TURN on: new agents in the same homes.
	r.close()
	a.close()
	b.close()
	tcfg := &PathsConfig{TURN: turn.config()}
	a, b = startNAT(t, ha.Host, natOpts{tun: true, paths: tcfg}), startNAT(t, hb.Host, natOpts{tun: true, paths: tcfg})
	waitFor(t, ctx, "TURN allocations", func() bool { return a.paths.Local().TURN.IsValid() && b.paths.Local().TURN.IsValid() })
	a.manage(t, b, PeerPaths{Candidates: []netip.AddrPort{rb}, TURN: b.paths.Local().TURN})
	b.manage(t, a, PeerPaths{Candidates: []netip.AddrPort{ra}, TURN: a.paths.Local().TURN})
	pingOverlay(t, ctx, a, b)
	viaTURN := iperf(t, ctx, a, b, 3)
	if st := pathOf(a, b); st.Path != PathTURN || st.Endpoint != b.paths.Local().TURN {
		t.Fatalf("a→b: %+v, want TURN to %v", st, b.paths.Local().TURN)
	}
	t.Logf("TURN: iperf3 %.0f Mbit/s", viaTURN/1e6)
}

// A NAT mapping that changes mid-flow (the router's conntrack flushed:
// under --random-fully the next datagram leaves from a new port) is
// recovered without anyone's help: the relay refuses the unknown source,
// the agent binds again from there, and a TCP transfer under way
// completes.
func TestNATMappingChange(t *testing.T) {
	requireNAT(t)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	in := newInternet(t, ctx)
	ha := addHome(t, ctx, in, "a", netns.EndpointDependent)
	hb := addHome(t, ctx, in, "b", netns.EndpointDependent)
	var members sync.Map
	r := startNAT(t, addPublic(t, ctx, in, "r"), natOpts{admitted: func(k identity.WGPublicKey) bool { _, ok := members.Load(k); return ok }})
	cfg := &PathsConfig{Relays: []RelayServer{r.server()}}
	a, b := startNAT(t, ha.Host, natOpts{paths: cfg}), startNAT(t, hb.Host, natOpts{paths: cfg})
	members.Store(a.pub(), true)
	members.Store(b.pub(), true)
	a.manage(t, b, PeerPaths{})
	b.manage(t, a, PeerPaths{})
	firstPacket(t, ctx, a, b)
	before := a.paths.Local().Relays[0].Observed
	transfer(t, ctx, a, b, 8<<20, func() {
		if err := ha.FlushConntrack(ctx); err != nil {
			t.Error(err)
		}
	})
	after := a.paths.Local().Relays[0].Observed
	if after == before {
		t.Fatalf("a's address at the relay is still %v after the flush: the mapping did not change", after)
	}
	if st := a.paths.Stats(); st.RelayRefusals == 0 {
		t.Fatalf("stats %+v: the relay never refused the new mapping", st)
	}
	t.Logf("a's mapping moved from %v to %v; relay %+v", before, after, r.relay.Stats())
}

// A relay refuses a node that is not a member before any cryptography,
// and a flood from one (bindings and sends) leaves members' relayed
// traffic whole: nothing of theirs is dropped or throttled.
func TestNATRelayRefusesNonMember(t *testing.T) {
	requireNAT(t)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	in := newInternet(t, ctx)
	ha := addHome(t, ctx, in, "a", netns.EndpointDependent)
	hb := addHome(t, ctx, in, "b", netns.EndpointDependent)
	hc := addHome(t, ctx, in, "c", netns.EndpointIndependent)
	var members sync.Map
	r := startNAT(t, addPublic(t, ctx, in, "r"), natOpts{admitted: func(k identity.WGPublicKey) bool { _, ok := members.Load(k); return ok }})
	cfg := &PathsConfig{Relays: []RelayServer{r.server()}}
	a, b := startNAT(t, ha.Host, natOpts{paths: cfg}), startNAT(t, hb.Host, natOpts{paths: cfg})
	c := startNAT(t, hc.Host, natOpts{paths: cfg}) // a node the relay does not serve
	members.Store(a.pub(), true)
	members.Store(b.pub(), true)
	a.manage(t, b, PeerPaths{})
	b.manage(t, a, PeerPaths{})
	c.manage(t, b, PeerPaths{})
	firstPacket(t, ctx, a, b)
	waitFor(t, ctx, "c refused", func() bool { return r.relay.Stats().Refused["not_admitted"] > 0 })
	if c.paths.Local().Relays[0].Bound {
		t.Fatal("the relay bound a non-member")
	}

	// The flood: binding requests under c's key and sends from an
	// unbound address, as fast as one goroutine can, for the transfer.
	var sock *net.UDPConn
	if err := hc.Host.Do(func() (err error) {
		sock, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(r.public()))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	var mac [32]byte
	bindFrame := appendBind(nil, &mac, c.pub(), uint64(time.Now().UnixNano()))
	sendFrame := append(appendRelayHeader(nil, frameSend, tagOf(b.pub())), make([]byte, 1200)...)
	stop := make(chan struct{})
	var flooded sync.WaitGroup
	var sent int
	flooded.Go(func() {
		// 20 000 datagrams a second: a flood for the relay's logic, not
		// one that starves the two shared cores the test runs on.
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		deadline := time.Now().Add(30 * time.Second) // bounded whatever happens
		for time.Now().Before(deadline) {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for range 10 {
				sock.Write(bindFrame)
				sock.Write(sendFrame)
				sent += 2
			}
		}
	})
	transfer(t, ctx, a, b, 2<<20, nil)
	close(stop)
	flooded.Wait()
	st := r.relay.Stats()
	t.Logf("flood of %d datagrams; relay %+v", sent, st)
	if st.Refused["not_admitted"] < 10 || st.Refused["unbound"] < 10 || st.Throttled != 0 {
		t.Fatalf("relay stats %+v after a flood of %d", st, sent)
	}
	if n := pairBytes(r.relay, a.pub(), b.pub()); n < 2<<20 {
		t.Fatalf("the relay forwarded %d bytes between the members", n)
	}
}
