package netns_test

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/agent6/agent6/internal/netns"
)

func setup(t *testing.T) context.Context {
	t.Helper()
	if err := netns.Available(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func ping(ctx context.Context, t *testing.T, from, to *netns.NS) {
	t.Helper()
	if out, err := from.Run(ctx, "ping", "-c1", "-W2", to.Addr.String()); err != nil {
		t.Fatalf("ping %s -> %s: %v\n%s", from.Name, to.Name, err, out)
	}
}

func TestPair(t *testing.T) {
	ctx := setup(t)
	p, err := netns.NewPair(ctx, "a6t")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.A.Addr.String() != "10.99.0.1" || p.B.Addr.String() != "10.99.0.2" {
		t.Errorf("addresses %v, %v; want 10.99.0.1, 10.99.0.2", p.A.Addr, p.B.Addr)
	}
	ping(ctx, t, p.A, p.B)
	ping(ctx, t, p.B, p.A)
}

func TestLAN(t *testing.T) {
	ctx := setup(t)
	l, err := netns.NewLAN(ctx, "a6t", 4)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, from := range l.Nodes {
		for _, to := range l.Nodes {
			if from != to {
				ping(ctx, t, from, to)
			}
		}
	}
}

// Close kills what runs inside, even a program that `ip netns exec` has
// not moved into the namespace yet: Close right after Start races with it,
// so the test closes ten pairs that way.
func TestClose(t *testing.T) {
	ctx := setup(t)
	for range 10 {
		p, err := netns.NewPair(ctx, "a6t")
		if err != nil {
			t.Fatal(err)
		}
		sleep := p.A.Command(ctx, "sleep", "60")
		if err := sleep.Start(); err != nil {
			p.Close()
			t.Fatal(err)
		}
		waited := make(chan error, 1)
		go func() { waited <- sleep.Wait() }()

		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-waited:
			if err == nil {
				t.Error("sleep inside the namespace exited cleanly; want it killed by Close")
			}
		case <-time.After(netns.StopDelay):
			t.Fatalf("sleep (pid %d) still running %v after Close", sleep.Process.Pid, netns.StopDelay)
		}
		if err := p.Close(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("second Close: %v, want net.ErrClosed", err)
		}
		out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{p.A.Name, p.B.Name} {
			if strings.Contains(string(out), name) {
				t.Errorf("namespace %s still listed after Close", name)
			}
		}
	}
}

func TestCommandCancel(t *testing.T) {
	ctx := setup(t)
	p, err := netns.NewPair(ctx, "a6t")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	cctx, cancel := context.WithCancel(ctx)
	sleep := p.B.Command(cctx, "sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	// ip netns exec may not have entered the namespace yet.
	var pids []int
	for len(pids) == 0 && ctx.Err() == nil {
		if pids, err = p.B.PIDs(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(pids) != 1 || pids[0] != sleep.Process.Pid {
		t.Errorf("PIDs in %s = %v, want [%d]", p.B.Name, pids, sleep.Process.Pid)
	}
	cancel()
	start := time.Now()
	if err := sleep.Wait(); err == nil {
		t.Error("sleep exited cleanly; want it stopped by SIGTERM")
	}
	if d := time.Since(start); d >= netns.StopDelay {
		t.Errorf("sleep took %v to stop; want SIGTERM to stop it before SIGKILL", d)
	}
}

func TestNewLANBadSize(t *testing.T) {
	if _, err := netns.NewLAN(t.Context(), "a6t", 0); err == nil {
		t.Error("NewLAN with 0 nodes succeeded")
	}
}

// Home hosts reach the internet through their routers' NAT; nothing on
// the internet reaches a home host.
func TestInternet(t *testing.T) {
	ctx := setup(t)
	for _, tool := range []string{"iptables", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	in, err := netns.NewInternet(ctx, "a6t")
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	pub, err := in.AddPublic(ctx, "pub")
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []netns.NATMode{netns.EndpointIndependent, netns.EndpointDependent} {
		h, err := in.AddHome(ctx, "home", mode)
		if err != nil {
			t.Fatal(err)
		}
		ping(ctx, t, h.Host, pub)
		ping(ctx, t, h.Host, in.Core)
		if out, err := pub.Run(ctx, "ping", "-c1", "-W1", h.Host.Addr.String()); err == nil {
			t.Fatalf("%s: the internet reached a home host:\n%s", mode, out)
		}
		if err := h.FlushConntrack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.Close(); err != nil {
		t.Fatal(err)
	}
	if err := in.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
}
