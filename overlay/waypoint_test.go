package overlay

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
)

// viaFunc is a Via made of two functions.
type viaFunc struct {
	out func(Tuple) ([]Waypoint, error)
	in  func(Tuple) []Waypoint
}

func (p viaFunc) Outbound(t Tuple) ([]Waypoint, error) { return p.out(t) }
func (p viaFunc) Inbound(t Tuple) []Waypoint           { return p.in(t) }

// wgNode is a device on a netstack, on loopback.
type wgNode struct {
	key  identity.WGPrivateKey
	addr netip.Addr
	dev  *Device
	ns   *Netstack
	port uint16
}

func newWGNode(t *testing.T, cfg FilterConfig) *wgNode {
	t.Helper()
	k, _ := identity.GeneratePrivateKey()
	n := &wgNode{key: k.WireGuard(), addr: k.WireGuard().Public().Addr()}
	backend, ns, err := NewNetstack(n.addr, 1420)
	if err != nil {
		t.Fatal(err)
	}
	n.ns = ns
	if n.dev, err = NewDevice(backend, Config{PrivateKey: n.key, Bind: NewBind(), Filter: cfg}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.dev.Close() })
	if n.port, err = n.dev.ListenPort(); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *wgNode) waypoint() Waypoint { return Waypoint{Addr: n.addr, Key: n.key.Public()} }

// mesh makes every node a static peer of every other over loopback.
func mesh(t *testing.T, nodes ...*wgNode) {
	t.Helper()
	for _, a := range nodes {
		for _, b := range nodes {
			if a == b {
				continue
			}
			ep := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), b.port)
			if err := a.dev.SetPeer(PeerConfig{PublicKey: b.key.Public(), Endpoint: ep}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A → W1 → W2 → D over WireGuard, in-process: TCP to D's port 8080 must
// cross W1 then W2 (and its replies W2 then W1), and carries a megabyte
// each way at full size, the MSS clamped so that nothing is too big; a
// flow to another port goes directly; D refuses the same flow sent
// directly, through W2 only, or through W2 then W1, each under its
// reason.
func TestWaypointsOverWireGuard(t *testing.T) {
	var a, w1, w2, d *wgNode
	// The policy, as each node's Via would say it: A ↔ D:8080 through
	// W1, W2 (replies through W2, W1); everything else direct.
	via := func(t Tuple) []Waypoint {
		switch {
		case t.Src.Addr() == a.addr && t.Dst == netip.AddrPortFrom(d.addr, 8080):
			return []Waypoint{w1.waypoint(), w2.waypoint()}
		case t.Src == netip.AddrPortFrom(d.addr, 8080) && t.Dst.Addr() == a.addr:
			return []Waypoint{w2.waypoint(), w1.waypoint()}
		}
		return nil
	}
	policy := viaFunc{out: func(t Tuple) ([]Waypoint, error) { return via(t), nil }, in: via}
	a = newWGNode(t, FilterConfig{Via: policy})
	w1 = newWGNode(t, FilterConfig{Transit: &Transit{}})
	w2 = newWGNode(t, FilterConfig{Transit: &Transit{}})
	d = newWGNode(t, FilterConfig{Via: policy})
	mesh(t, a, w1, w2, d)

	ln, err := d.ns.ListenTCP(netip.AddrPortFrom(d.addr, 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ln2, err := d.ns.ListenTCP(netip.AddrPortFrom(d.addr, 9090))
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	for _, l := range []net.Listener{ln, ln2} {
		go func() { // echo
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(c, c); c.Close() }()
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	echo := func(port uint16, n int) {
		t.Helper()
		c, err := a.ns.DialTCP(ctx, netip.AddrPortFrom(d.addr, port))
		if err != nil {
			t.Fatalf("dial D:%d: %v", port, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		data := make([]byte, n)
		rand.Read(data)
		go c.Write(data)
		got := make([]byte, n)
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("echo from D:%d: %v", port, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("echo from D:%d changed", port)
		}
	}

	// Capture at D meanwhile (what arrives from W2 shows the sizes), and
	// at W1 (what it sends on is SRv6 towards W2, then D).
	var pcap, atW1 bytes.Buffer
	cctx, ccancel := context.WithCancel(ctx)
	captured := make(chan error, 2)
	go func() {
		_, err := d.dev.Filter().Capture(cctx, &pcap, CaptureConfig{Peer: w2.addr})
		captured <- err
	}()
	go func() {
		_, err := w1.dev.Filter().Capture(cctx, &atW1, CaptureConfig{Peer: w2.addr})
		captured <- err
	}()
	echo(8080, 1<<20)
	ccancel()
	for range 2 {
		if err := <-captured; err != nil {
			t.Fatal(err)
		}
	}
	checkW1Capture(t, atW1.Bytes(), a, w1, w2, d)
	// Full size: two waypoints cost 144 bytes, the largest inner packet
	// is 1280 (the MSS clamped to 1220), and so the largest SRv6 packet
	// from W2 is 1424 bytes; none is larger. (gVisor leaves room for 40
	// bytes of TCP options in every segment, so its largest carry 1180
	// bytes of data: 1252 with the timestamp option alone.)
	largest := 0
	for _, p := range readPcap(t, pcap.Bytes()) {
		var v srv6View
		if parseSRv6(p, &v) == nil && v.info.src == a.addr.As16() {
			largest = max(largest, len(p))
		}
	}
	if largest > 1424 || largest < 1380 {
		t.Errorf("largest packet of the flow from W2 to D: %d bytes, want 1380 to 1424", largest)
	}
	sa, s1, s2, sd := a.dev.Filter().Stats(), w1.dev.Filter().Stats(), w2.dev.Filter().Stats(), d.dev.Filter().Stats()
	if s1.Forwarded < 1500 || s2.Forwarded < 1500 || s1.ForwardedBytes < 2<<20 || s2.ForwardedBytes < 2<<20 {
		t.Fatalf("waypoints forwarded %d / %d packets, %d / %d bytes: the megabyte each way did not cross them",
			s1.Forwarded, s2.Forwarded, s1.ForwardedBytes, s2.ForwardedBytes)
	}
	for name, st := range map[string]FilterStats{"A": sa, "W1": s1, "W2": s2, "D": sd} {
		for r, n := range st.Drops {
			if n != 0 && r != DropNotOverlay.String() {
				t.Errorf("%s dropped %d packets as %s", name, n, r)
			}
		}
	}

	// Another port goes directly: the waypoints see none of it.
	echo(9090, 64<<10)
	for _, tf := range w1.dev.Filter().TransitFlows() {
		if tf.Flow.Dst.Port() == 9090 || tf.Flow.Src.Port() == 9090 {
			t.Fatalf("W1 forwarded the direct flow %+v", tf)
		}
	}

	// The flow to 8080 (a datagram here) sent directly, through W2 only,
	// through W2 then W1: D refuses each, under its reason, and nothing
	// reaches its socket.
	pc, err := d.ns.ListenUDP(netip.AddrPortFrom(d.addr, 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	uc, err := a.ns.DialUDP(netip.AddrPortFrom(a.addr, 0), netip.AddrPortFrom(d.addr, 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	for _, tc := range []struct {
		name string
		via  []Waypoint
		want DropReason
	}{
		{"direct", nil, DropWaypointBypassed},
		{"W2 only", []Waypoint{w2.waypoint()}, DropWaypointBypassed},
		{"W2 then W1", []Waypoint{w2.waypoint(), w1.waypoint()}, DropWaypointOrder},
	} {
		a.dev.Filter().SetViaOverride(d.addr, tc.via)
		before := d.dev.Filter().Drops(tc.want)
		for i := 0; d.dev.Filter().Drops(tc.want) == before; i++ {
			if i == 100 {
				t.Fatalf("%s: D counted no %s drop in 5 s", tc.name, tc.want)
			}
			uc.Write([]byte(tc.name))
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Through W1 and W2 again, a datagram arrives; it is the first.
	a.dev.Filter().ClearViaOverride(d.addr)
	if _, err := uc.Write([]byte("through")); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	if n, _, err := pc.ReadFrom(buf); err != nil || string(buf[:n]) != "through" {
		t.Fatalf("D's socket read %q, %v; want the datagram sent through the waypoints, and nothing before", buf[:n], err)
	}
	echo(8080, 1024) // and the proper path still works
}

// readPcap returns the packets of a pcap stream as Capture writes it.
func readPcap(t *testing.T, b []byte) [][]byte {
	t.Helper()
	if len(b) < 24 || binary.LittleEndian.Uint32(b) != pcapMagicNanos || binary.LittleEndian.Uint32(b[20:]) != linktypeRaw {
		t.Fatalf("not a pcap stream of raw IP: % x", b[:min(len(b), 24)])
	}
	var out [][]byte
	for b = b[24:]; len(b) >= 16; {
		n := int(binary.LittleEndian.Uint32(b[8:]))
		if len(b) < 16+n {
			t.Fatal("pcap record cut short")
		}
		out = append(out, b[16:16+n])
		b = b[16+n:]
	}
	return out
}

// A flow whose waypoints are all unreachable fails closed, and at once:
// the source's stack gets ICMPv6 "administratively prohibited" and the
// connection attempt fails instead of retrying its SYN for a minute.
func TestNoWaypointFailsAtOnce(t *testing.T) {
	policy := viaFunc{
		out: func(Tuple) ([]Waypoint, error) { return nil, ErrNoWaypoint },
		in:  func(Tuple) []Waypoint { return nil },
	}
	a := newWGNode(t, FilterConfig{Via: policy})
	d := newWGNode(t, FilterConfig{})
	mesh(t, a, d)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := a.ns.DialTCP(ctx, netip.AddrPortFrom(d.addr, 80))
	if err == nil {
		c.Close()
		t.Fatal("connected through no waypoint")
	}
	if ctx.Err() != nil {
		t.Fatalf("dial gave up only at its deadline (%v): the stack was not told", err)
	}
	st := a.dev.Filter().Stats()
	if st.Drops[DropNoWaypoint.String()] == 0 || st.ICMPErrors == 0 {
		t.Fatalf("no_waypoint drops %d, ICMPv6 errors %d", st.Drops[DropNoWaypoint.String()], st.ICMPErrors)
	}
	t.Logf("dial failed with %v", err)
}

// checkW1Capture reads W1's capture with tshark: the packets W1 sends to
// W2 decode as SRv6 with segments left 1, the segment list D, W2, W1, and
// A's packet inside.
func checkW1Capture(t *testing.T, pcap []byte, a, w1, w2, d *wgNode) {
	t.Helper()
	if _, err := exec.LookPath("tshark"); err != nil && os.Getenv("CI") == "" {
		t.Log("tshark not installed: W1's capture not decoded")
		return
	}
	file := filepath.Join(t.TempDir(), "w1.pcap")
	if err := os.WriteFile(file, pcap, 0o600); err != nil {
		t.Fatal(err)
	}
	rows := tsharkFields(t, file, "ipv6.src", "ipv6.dst", "ipv6.routing.segleft", "ipv6.routing.srh.addr", "tcp.dstport")
	want := strings.Join([]string{w1.addr.String() + "," + a.addr.String(), w2.addr.String() + "," + d.addr.String(), "1",
		d.addr.String() + "," + w2.addr.String() + "," + w1.addr.String(), "8080"}, " | ")
	n := 0
	for _, r := range rows {
		if strings.HasPrefix(r[0], w1.addr.String()+",") && r[4] == "8080" {
			if got := strings.Join(r, " | "); got != want {
				t.Fatalf("W1 sent, as tshark reads it:\n got  %s\n want %s", got, want)
			}
			n++
		}
	}
	if n < 100 {
		t.Fatalf("tshark found %d packets W1 sent on towards D:8080 in %d", n, len(rows))
	}
}
