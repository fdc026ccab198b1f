package gossip

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func fast(c *memberlist.Config) {
	c.ProbeInterval = 500 * time.Millisecond
	c.ProbeTimeout = 250 * time.Millisecond
	c.GossipInterval = 100 * time.Millisecond
	c.PushPullInterval = 5 * time.Second
	c.SuspicionMult = 3
	c.TCPTimeout = 2 * time.Second
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("AGENT6_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("t", t.Name())
}

// TestRun measures both systems on a small cluster, removals included.
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts small clusters; skipped with -short")
	}
	for _, sys := range []string{Memberlist, Agent6} {
		t.Run(sys, func(t *testing.T) {
			r := Run(context.Background(), Options{
				System: sys, Nodes: 6, Tune: fast,
				Converge: 30 * time.Second, Settle: time.Second, Window: 2 * time.Second,
				Removal: true, RemovalTimeout: 30 * time.Second, ReturnWait: 2 * time.Second,
				Logger: testLogger(t), Progress: t.Logf,
			})
			if r.Failure != "" {
				t.Fatal(r.Failure)
			}
			if r.Pairs != 6*5 || r.Convergence <= 0 {
				t.Errorf("pairs %d, convergence %v s", r.Pairs, r.Convergence)
			}
			if r.WireBytes <= 0 || r.PayloadBytes <= 0 {
				t.Errorf("bytes at rest: wire %v, payload %v", r.WireBytes, r.PayloadBytes)
			}
			if sys == Memberlist && r.WireBytes != r.PayloadBytes {
				t.Errorf("bare memberlist: wire %v ≠ payload %v", r.WireBytes, r.PayloadBytes)
			}
			if sys == Agent6 && r.WireBytes <= r.PayloadBytes {
				t.Errorf("agent6: wire %v ≤ payload %v; WireGuard adds to it", r.WireBytes, r.PayloadBytes)
			}
			t.Logf("cut off from gossip: %+v", r.Partition)
			for _, rm := range []*Removal{r.Crash, r.Leave} {
				if rm == nil || rm.Dead <= 0 || rm.Remaining != 0 || rm.Returned != 0 {
					t.Errorf("removal: %+v", rm)
				}
				if sys == Agent6 && rm != nil && rm.PeerGone <= 0 {
					t.Errorf("agent6: WireGuard peer not removed: %+v", rm)
				}
			}
		})
	}
}

func TestFormulas(t *testing.T) {
	c := memberlist.DefaultLANConfig() // SuspicionMult 4, ProbeInterval 1 s, PushPullInterval 30 s
	for _, tc := range []struct {
		n         int
		susp, ppi time.Duration
	}{
		{1, 4 * time.Second, 30 * time.Second},
		{10, 4 * time.Second, 30 * time.Second},
		{100, 8 * time.Second, 90 * time.Second},
		{200, 9204 * time.Millisecond, 120 * time.Second},
	} {
		if got := SuspicionTimeout(c, tc.n); got != tc.susp {
			t.Errorf("SuspicionTimeout(%d) = %v, want %v", tc.n, got, tc.susp)
		}
		if got := PushPullInterval(c, tc.n); got != tc.ppi {
			t.Errorf("PushPullInterval(%d) = %v, want %v", tc.n, got, tc.ppi)
		}
	}
}
