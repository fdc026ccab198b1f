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
	crypto := MeasureCrypto()
	for _, sys := range []string{Memberlist, Agent6} {
		t.Run(sys, func(t *testing.T) {
			r := Run(context.Background(), Options{
				System: sys, Nodes: 6, Tune: fast, Crypto: crypto,
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
			// Gossip to every other node needs a session with it in
			// agent6; bare memberlist has none.
			if sys == Memberlist && (r.Sessions != 0 || r.CryptoCPU != 0) {
				t.Errorf("bare memberlist: %d sessions, crypto %v CPU s", r.Sessions, r.CryptoCPU)
			}
			if sys == Agent6 && (r.Sessions < 1 || r.Sessions > 15 || float64(r.CryptoCPU) < crypto.Admissions(6).Seconds()) {
				t.Errorf("agent6: %d sessions of 15 pairs, crypto %v CPU s", r.Sessions, r.CryptoCPU)
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

func TestCryptoCost(t *testing.T) {
	c := CryptoCost{DH: 60 * time.Microsecond, KeyGen: 30 * time.Microsecond, Verify: 35 * time.Microsecond}
	// 200 nodes: 39 800 ordered pairs × (60 + 2·35) µs.
	if got, want := c.Admissions(200), 5174*time.Millisecond; got != want {
		t.Errorf("Admissions(200) = %v, want %v", got, want)
	}
	// 1000 handshakes × (6·60 + 2·30) µs.
	if got, want := c.Handshakes(1000), 420*time.Millisecond; got != want {
		t.Errorf("Handshakes(1000) = %v, want %v", got, want)
	}
	m := MeasureCrypto()
	if m.DH <= 0 || m.KeyGen <= 0 || m.Verify <= 0 || m.DH > 10*time.Millisecond {
		t.Errorf("measured %+v", m)
	}
}
