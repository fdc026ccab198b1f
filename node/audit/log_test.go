package audit

import (
	"slices"
	"sync"
	"testing"
)

func TestAppendProve(t *testing.T) {
	for _, tc := range []struct {
		name    string
		storage func(t *testing.T) Storage
	}{
		{"memory", func(*testing.T) Storage { return Memory(0) }},
		{"posix", func(t *testing.T) Storage { return POSIX(t.TempDir()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t)
			l := openTest(t, Config{Storage: tc.storage(t)})
			trace := NewTraceID()
			// Appends from many goroutines share batches.
			var mu sync.Mutex
			var idx []uint64
			var wg sync.WaitGroup
			for w := range 16 {
				wg.Go(func() {
					for i := w; i < 300; i += 16 {
						tr := TraceID{}
						if i%7 == 0 {
							tr = trace
						}
						n, err := l.Append(ctx, flowEnd(i, tr))
						if err != nil {
							t.Error(err)
							return
						}
						if tr == trace {
							mu.Lock()
							idx = append(idx, n)
							mu.Unlock()
						}
					}
				})
			}
			wg.Wait()
			slices.Sort(idx)
			cp, err := l.AwaitCheckpoint(ctx, 299)
			if err != nil {
				t.Fatal(err)
			}
			if cp.Size != 300 {
				t.Fatalf("checkpoint size %d", cp.Size)
			}
			for _, i := range []uint64{0, 1, 255, 256, 299} {
				p, err := l.Prove(ctx, i, cp)
				if err != nil {
					t.Fatal(err)
				}
				if err := p.Verify(cp); err != nil {
					t.Fatal(err)
				}
			}
			got, _, err := l.Trace(ctx, trace)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(idx) {
				t.Fatalf("trace: %d records, want %d", len(got), len(idx))
			}
			for i, p := range got {
				if p.Index != idx[i] || p.Record.Trace != trace {
					t.Fatalf("trace record %d: index %d, want %d", i, p.Index, idx[i])
				}
			}
		})
	}
}
