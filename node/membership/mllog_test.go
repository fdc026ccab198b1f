package membership

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// records is a slog.Handler that keeps what it is given.
type records struct {
	mu  sync.Mutex
	got []slog.Record
}

func (h *records) Enabled(context.Context, slog.Level) bool { return true }
func (h *records) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *records) WithGroup(string) slog.Handler            { return h }
func (h *records) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.got = append(h.got, r)
	return nil
}

func (h *records) take() []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.got
	h.got = nil
	return out
}

func suppressed(r slog.Record) int64 {
	var n int64
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "suppressed" {
			n = a.Value.Int64()
		}
		return true
	})
	return n
}

func TestMemberlistLogLevels(t *testing.T) {
	for line, want := range map[string]slog.Level{
		"[ERR] memberlist: Push/Pull with 2001:0021:0000:0000:0000:0000:0000:0001 failed: dial tcp [2001:21::1]:7946: i/o timeout": slog.LevelWarn,
		"[ERR] memberlist: Failed to send gossip to [2001:21::1]:7946: write udp: connection refused":                              slog.LevelWarn,
		"[ERR] memberlist: Failed fallback TCP ping: EOF":                                                                          slog.LevelWarn,
		"[ERR] memberlist: Failed to decode ping: bad magic":                                                                       slog.LevelError,
		"[WARN] memberlist: Was able to connect to x over TCP but UDP probes failed":                                               slog.LevelWarn,
		"[INFO] memberlist: Suspect x has failed, no acks received":                                                                slog.LevelInfo,
		"[DEBUG] memberlist: Stream connection from=[2001:21::1]:4000":                                                             slog.LevelDebug,
		"no tag at all": slog.LevelDebug,
	} {
		if got, _ := level(line); got != want {
			t.Errorf("%q: level %v, want %v", line, got, want)
		}
	}
}

// While a peer is unreachable, memberlist's failures of one kind are
// logged once per mlLogEvery, the next saying how many were suppressed;
// another kind is logged at once.
func TestMemberlistLogRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &records{}
		l := newMemberlistLogger(slog.New(h))
		for i := range 100 {
			l.Printf("[ERR] memberlist: Push/Pull with 2001:0021::%x failed: dial tcp: i/o timeout", i)
		}
		l.Printf("[ERR] memberlist: Failed to decode ping: bad magic from 2001:21::1")
		got := h.take()
		if len(got) != 2 || got[0].Level != slog.LevelWarn || got[1].Level != slog.LevelError {
			t.Fatalf("logged %d lines (%v), want the first push/pull failure as a warning and the decode error", len(got), got)
		}
		time.Sleep(mlLogEvery)
		l.Printf("[ERR] memberlist: Push/Pull with 2001:0021::ffff failed: dial tcp: i/o timeout")
		got = h.take()
		if len(got) != 1 || suppressed(got[0]) != 99 {
			t.Fatalf("after %v: %v, want one line saying 99 were suppressed", mlLogEvery, got)
		}
		// Debug lines are not rate-limited: they are off in production.
		for range 3 {
			l.Printf("[DEBUG] memberlist: Stream connection from=[2001:21::1]:4000")
		}
		if got := h.take(); len(got) != 3 {
			t.Fatalf("debug lines: %d, want 3", len(got))
		}
	})
}
