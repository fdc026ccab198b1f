package node_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
)

// pair starts two embedded nodes on loopback that know each other.
func pair(t *testing.T) (a, b *node.Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, b = &node.Node{}, &node.Node{}
	for _, n := range []*node.Node{a, b} {
		if err := n.Up(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
	}
	link(t, a, b)
	return a, b
}

// link makes a and b static peers of each other over loopback.
func link(t *testing.T, a, b *node.Node) {
	t.Helper()
	for _, p := range [][2]*node.Node{{a, b}, {b, a}} {
		port, err := p[1].UDPPort()
		if err != nil {
			t.Fatal(err)
		}
		if err := p[0].AddPeer(node.Peer{PublicKey: p[1].PublicKey(), Endpoint: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestTwoNodesHTTP(t *testing.T) {
	a, b := pair(t)
	if a.Addr() == b.Addr() || !identity.IsOverlay(a.Addr()) || !a.PublicKey().Owns(a.Addr()) {
		t.Fatalf("bad addresses: %s %s", a.Addr(), b.Addr())
	}
	ln, err := b.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.RemoteAddr)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	client := &http.Client{Transport: &http.Transport{DialContext: a.Dial}}
	resp, err := client.Get("http://[" + b.Addr().String() + "]/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// The server sees the caller's derived address: address = identity.
	host, _, _ := net.SplitHostPort(string(body[len("hello "):]))
	if got := netip.MustParseAddr(host); got != a.Addr() {
		t.Fatalf("server saw caller %s, want %s", got, a.Addr())
	}

	st, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 1 || st.Peers[0].Addr != b.Addr() || st.Peers[0].LastHandshake == nil || st.Peers[0].TxBytes == 0 {
		t.Fatalf("status peers = %+v", st.Peers)
	}
	if st.Filter.OutPackets == 0 || st.Filter.InPackets == 0 || st.Filter.ActiveFlows == 0 {
		t.Fatalf("filter counted nothing: %+v", st.Filter)
	}
}

func TestUDP(t *testing.T) {
	a, b := pair(t)
	pc, err := b.ListenPacket("udp", ":5353")
	if err != nil {
		t.Fatal(err)
	}
	c, err := a.Dial(context.Background(), "udp", netip.AddrPortFrom(b.Addr(), 5353).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := 0; ; i++ { // the first datagram may wait for the handshake
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		nr, from, err := pc.ReadFrom(buf)
		if err == nil {
			if string(buf[:nr]) != "ping" || from.(*net.UDPAddr).AddrPort().Addr() != a.Addr() {
				t.Fatalf("got %q from %v", buf[:nr], from)
			}
			break
		}
		if i == 10 {
			t.Fatal(err)
		}
	}
	// Datagrams larger than the tunnel MTU travel as IPv6 fragments
	// through the filter and WireGuard: gossip packets are 5464 bytes
	// (four fragments at MTU 1420).
	for _, size := range []int{5464, 16000} {
		big := make([]byte, size)
		for i := range big {
			big[i] = byte(i * 7)
		}
		if _, err := c.Write(big); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 65536)
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		nr, _, err := pc.ReadFrom(got)
		for err == nil && string(got[:nr]) == "ping" { // a late one from the handshake loop
			nr, _, err = pc.ReadFrom(got)
		}
		if err != nil {
			t.Fatalf("%d-byte datagram: %v", size, err)
		}
		if !bytes.Equal(got[:nr], big) {
			t.Fatalf("%d-byte datagram arrived as %d bytes, or changed", size, nr)
		}
	}
}

func TestDialErrors(t *testing.T) {
	a, _ := pair(t)
	ctx := context.Background()
	if _, err := a.Dial(ctx, "tcp", "[2001:db8::1]:80"); !errors.Is(err, node.ErrNotOverlay) {
		t.Errorf("dial outside overlay: err = %v, want ErrNotOverlay", err)
	}
	if _, err := a.Dial(ctx, "tcp", "example.com:80"); err == nil {
		t.Error("dial by name succeeded")
	}
	if _, err := a.Dial(ctx, "sctp", "[2001:21::1]:80"); err == nil {
		t.Error("dial sctp succeeded")
	}
	if _, err := a.Listen("tcp", "[2001:21::1]:80"); !errors.Is(err, node.ErrNotLocal) {
		t.Errorf("listen on another address: err = %v, want ErrNotLocal", err)
	}
	// An overlay address no peer holds fails at once, not at the deadline.
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, network := range []string{"tcp", "udp"} {
		_, err := a.Dial(dctx, network, "[2001:21::1]:80")
		if !errors.Is(err, node.ErrUnknownAddr) || !strings.Contains(err.Error(), "no known agent holds") {
			t.Errorf("dial %s to an address nobody holds: err = %v, want ErrUnknownAddr", network, err)
		}
	}
	var idle node.Node
	if _, err := idle.Dial(ctx, "tcp", "[2001:21::1]:80"); !errors.Is(err, node.ErrNotUp) {
		t.Errorf("dial before Up: err = %v, want ErrNotUp", err)
	}
}

func TestLifecycle(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	n := &node.Node{Dir: dir}
	if err := n.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	addr := n.Addr()
	ln, err := n.Listen("tcp", ":1")
	if err != nil {
		t.Fatal(err)
	}
	acceptErr := make(chan error, 1)
	go func() { _, err := ln.Accept(); acceptErr <- err }()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-acceptErr:
		if err == nil {
			t.Fatal("Accept returned a connection after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Accept")
	}
	if err := n.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v, want net.ErrClosed", err)
	}
	if err := n.Up(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Up after Close: %v, want net.ErrClosed", err)
	}
	// The key persisted in Dir: a new node there has the same address.
	n2 := &node.Node{Dir: dir}
	if err := n2.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer n2.Close()
	if n2.Addr() != addr {
		t.Fatalf("restarted node has address %s, want %s", n2.Addr(), addr)
	}
}

// A node whose UDP port is taken fails at Up, saying so, before it
// creates anything.
func TestUpPortInUse(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n := &node.Node{ListenPort: uint16(c.LocalAddr().(*net.UDPAddr).Port)}
	defer n.Close()
	if err := n.Up(context.Background()); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("Up on a taken port: %v, want an error saying it is in use", err)
	}
}
