package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agent6/agent6/internal/netns"
)

// `agent6 capture` on a sidecar while it pings another: the file it
// writes is a pcap that tshark reads, holding the echo requests and
// replies, and nothing for other peers.
func TestCaptureNetns(t *testing.T) {
	requireNetns(t, "ping", "tshark")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := buildAgent6(t)
	pair, err := netns.NewPair(ctx, "a6c")
	if err != nil {
		t.Fatal(err)
	}
	defer pair.Close()
	a, b := newSidecar(t, bin, pair.A), newSidecar(t, bin, pair.B)
	a.start(t, "", b)
	b.start(t, "", a)
	// A first ping makes the WireGuard session; the capture covers the
	// second.
	if out, err := a.ns.Run(ctx, "ping", "-6", "-c", "1", "-W", "5", b.addr.String()); err != nil {
		t.Fatalf("ping6: %v\n%s", err, out)
	}

	file := filepath.Join(t.TempDir(), "a.pcap")
	var stderr bytes.Buffer
	capture := exec.CommandContext(ctx, bin, "capture", "-o", file, "--peer", b.addr.String(), "--duration", "4s", "--socket", a.socket)
	capture.Stderr = &stderr
	if err := capture.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if capture.ProcessState == nil {
			capture.Process.Kill() // by PID
			capture.Wait()
		}
	}()
	// The header is written once the capture records.
	for i := 0; ; i++ {
		if fi, err := os.Stat(file); err == nil && fi.Size() >= 24 {
			break
		}
		if i == 100 {
			t.Fatalf("no pcap header after 5 s: %s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := a.ns.Run(ctx, "ping", "-6", "-c", "5", "-i", "0.2", "-W", "5", b.addr.String()); err != nil {
		t.Fatalf("ping6: %v\n%s", err, out)
	}
	if err := capture.Wait(); err != nil {
		t.Fatalf("agent6 capture: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "0 dropped") {
		t.Errorf("agent6 capture said: %s", stderr.String())
	}
	out, err := exec.Command("tshark", "-r", file, "-T", "fields", "-e", "ipv6.src", "-e", "ipv6.dst", "-e", "icmpv6.type").Output()
	if err != nil {
		t.Fatalf("tshark -r: %v", err)
	}
	var requests, replies int
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		switch f := strings.Split(line, "\t"); {
		case f[0] == a.addr.String() && f[1] == b.addr.String() && f[2] == "128":
			requests++
		case f[0] == b.addr.String() && f[1] == a.addr.String() && f[2] == "129":
			replies++
		default:
			t.Errorf("a packet that is no echo between a and b: %q", line)
		}
	}
	if requests != 5 || replies != 5 {
		t.Fatalf("tshark read %d echo requests and %d replies, want 5 and 5:\n%s", requests, replies, out)
	}
}
