package audit

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
)

func testKey(t testing.TB) identity.PrivateKey {
	t.Helper()
	k, err := identity.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// flowEnd returns a plausible flow-end record numbered i.
func flowEnd(i int, trace TraceID) Record {
	end := time.Unix(1_800_000_000, int64(i)*1000).UTC()
	return Record{
		Kind: KindFlowEnd, Time: end, Trace: trace,
		Src:   netip.MustParseAddr("2001:21:4bc6:f39d:90d:70a2:9351:1c64"),
		Dst:   netip.MustParseAddr("2001:21:17ec:ae69:4224:9dde:7e1:9b34"),
		Proto: 6, SrcPort: uint16(40000 + i%20000), DstPort: 443, Role: RoleSource,
		Start: end.Add(-time.Second), End: end, EndReason: EndFIN,
		Fwd: Counters{Packets: 10, Bytes: 1500}, Rev: Counters{Packets: 12, Bytes: 9000},
		Verdict: VerdictAllow, PolicyIDs: []string{"allow-tools"},
	}
}

// openTest opens a log for a test and closes it at the end.
func openTest(t testing.TB, cfg Config) *Log {
	t.Helper()
	if cfg.Key.IsZero() {
		cfg.Key = testKey(t)
	}
	if cfg.CheckpointInterval == 0 {
		cfg.CheckpointInterval = 100 * time.Millisecond
	}
	l, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
