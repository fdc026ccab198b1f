package audit_test

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node/audit"
)

// A node appends a flow record for a task's trace, waits for a checkpoint
// and reads the trace back with proofs that any reader can check.
func Example() {
	ctx := context.Background()
	key, _ := identity.GeneratePrivateKey()
	l, err := audit.Open(ctx, audit.Config{Key: key, TrustDomain: "example.org", CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		panic(err)
	}
	defer l.Close()

	trace := audit.NewTraceID()
	end := time.Now()
	i, err := l.Append(ctx, audit.Record{
		Kind: audit.KindFlowEnd, Time: end, Trace: trace,
		Src: netip.MustParseAddr("2001:21::1"), Dst: netip.MustParseAddr("2001:21::2"),
		Proto: 6, DstPort: 443, Role: audit.RoleSource,
		Start: end.Add(-time.Second), End: end, EndReason: audit.EndFIN,
		Fwd: audit.Counters{Packets: 4, Bytes: 1200}, Rev: audit.Counters{Packets: 3, Bytes: 5400},
		Verdict: audit.VerdictAllow,
	})
	if err != nil {
		panic(err)
	}
	if _, err := l.AwaitCheckpoint(ctx, i); err != nil {
		panic(err)
	}
	records, cp, err := l.Trace(ctx, trace)
	if err != nil {
		panic(err)
	}
	for _, p := range records {
		fmt.Println(p.Record.Kind, p.Record.DstPort, p.Verify(cp) == nil)
	}
	// Output: flow_end 443 true
}
