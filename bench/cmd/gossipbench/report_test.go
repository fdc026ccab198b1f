package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agent6/agent6/bench/gossip"
)

func TestParseSizes(t *testing.T) {
	got, err := parseSizes("200, 50,100,50,400", 300)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{50, 100, 200}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for _, bad := range []string{"", "1", "x", "500"} {
		if _, err := parseSizes(bad, 300); err == nil {
			t.Errorf("parseSizes(%q) did not fail", bad)
		}
	}
}

// A size is not tried when the last one's peak, scaled to it, would
// not fit, even if the memory at rest would.
func TestSkipByPeak(t *testing.T) {
	const mib, gib = 1 << 20, 1 << 30
	b := &bench{memLimit: 12 * gib, deadline: time.Now().Add(time.Hour)}
	done := []*gossip.Result{
		{Nodes: 100, RSSPerNode: 17.5 * mib, PeakRSS: 2 * gib, BaseRSS: gib},
		{Nodes: 200, RSSPerNode: 32.8 * mib, PeakRSS: 7*gib + 300*mib, BaseRSS: gib},
	}
	if why := b.skip(250, done); why != "" {
		t.Errorf("250 nodes skipped: %s", why)
	}
	// At rest: (32.8 + 0.153·100) MiB × 300 = 14.1 GiB; the peak: 6.3 GiB
	// grown over the base, × 1.5 × 1.5 = 14.2 GiB. Both are over 12; with
	// a limit between them, only the peak is.
	if why := b.skip(300, done); !strings.Contains(why, "and peak") {
		t.Errorf("300 nodes: %q, want skipped", why)
	}
	b.memLimit = 14*gib + 150*mib
	if why := b.skip(300, done); why == "" {
		t.Error("300 nodes tried although the scaled peak is over the limit")
	}
}
