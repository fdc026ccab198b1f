package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agent6/agent6/internal/netns"
)

// TestSecondUpHarmsNothing starts a second `agent6 up` in the namespace
// of a running one, sharing one of its socket, UDP port, TUN name or (with
// all three its own) the overlay route. Each attempt must fail, saying
// why, and leave the first node as it was: its route, its socket, and its
// peer reachable over the overlay.
func TestSecondUpHarmsNothing(t *testing.T) {
	requireNetns(t, "ping")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin := buildAgent6(t)
	pair, err := netns.NewPair(ctx, "a6u")
	if err != nil {
		t.Fatal(err)
	}
	defer pair.Close()
	a, b := newSidecar(t, bin, pair.A), newSidecar(t, bin, pair.B)
	a.start(t, "", b)
	b.start(t, "", a)

	route := func() string {
		t.Helper()
		out, err := a.ns.Run(ctx, "ip", "-6", "route", "show", "2001:20::/28")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	var want string // the first node's route
	intact := func(after string) {
		t.Helper()
		if got := route(); got != want {
			t.Fatalf("after %s: the first node's route is %q, was %q", after, got, want)
		}
		if _, err := a.status(t); err != nil {
			t.Fatalf("after %s: the first node's LocalAPI: %v", after, err)
		}
		if out, err := a.ns.Run(ctx, "ping", "-6", "-c", "1", "-W", "5", b.addr.String()); err != nil {
			t.Fatalf("after %s: ping over the overlay: %v\n%s", after, err, out)
		}
		if out, err := a.ns.Run(ctx, "ip", "link", "show", "a6two"); err == nil {
			t.Fatalf("after %s: the second node's TUN is left behind:\n%s", after, out)
		}
	}
	want = route()
	if !strings.Contains(want, "dev agent6") {
		t.Fatalf("first node's route: %q", want)
	}
	intact("the first start")

	second := newSidecar(t, bin, pair.A)
	for _, tc := range []struct {
		what, socket, tun, why string
		port                   int
	}{
		{"the same socket", a.socket, "a6two", "is in use by another agent6", 51821},
		{"the same UDP port", second.socket, "a6two", "UDP port 51820 is in use", 51820},
		{"the same TUN name", second.socket, "agent6", `interface "agent6" exists`, 51821},
		{"the same overlay route", second.socket, "a6two", "2001:20::/28 is already routed to agent6", 51821},
	} {
		cfg := fmt.Sprintf("key: agent.key\nlisten_port: %d\ntun: %s\nlocalapi: %s\nstate_dir: %s\n", tc.port, tc.tun, tc.socket, second.dir)
		path := filepath.Join(second.dir, "agent6.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
		out, err := a.ns.Run(rctx, bin, "up", "--config", path)
		rcancel()
		if err == nil || !strings.Contains(string(out), tc.why) {
			t.Errorf("second up with %s: %v, want a failure saying %q:\n%s", tc.what, err, tc.why, out)
		}
		intact("a second up with " + tc.what)
		if tc.socket == second.socket {
			if _, err := os.Stat(second.socket); !os.IsNotExist(err) {
				t.Errorf("second up with %s left its socket behind", tc.what)
			}
		}
	}
	a.stop(t)
	b.stop(t)
}

// TestSidecarNotify runs `agent6 up` as systemd runs a Type=notify
// service: it says READY=1 once it answers, and STOPPING=1 on SIGTERM.
func TestSidecarNotify(t *testing.T) {
	requireNetns(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	bin := buildAgent6(t)
	pair, err := netns.NewPair(ctx, "a6n")
	if err != nil {
		t.Fatal(err)
	}
	defer pair.Close()
	notify := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	read := func() string {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no message from agent6 up: %v", err)
		}
		return string(buf[:n])
	}
	a := newSidecar(t, bin, pair.A)
	a.env = []string{"NOTIFY_SOCKET=" + notify}
	a.start(t, "") // returns once agent6 wait saw the LocalAPI answer
	if got := read(); got != "READY=1" {
		t.Fatalf("agent6 up told systemd %q, want READY=1", got)
	}
	a.stop(t)
	if got := read(); got != "STOPPING=1" {
		t.Fatalf("agent6 up told systemd %q on SIGTERM, want STOPPING=1", got)
	}
}
