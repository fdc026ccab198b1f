package taskbench_test

import (
	"context"
	"testing"
	"time"

	"github.com/agent6/agent6/bench/taskbench"
)

func newPair(tb testing.TB) *taskbench.Pair {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := taskbench.NewPair(ctx, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// Every measurement runs, briefly, without errors.
func TestMeasurements(t *testing.T) {
	p := newPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	fb, err := p.FirstByte(ctx, 4)
	if err != nil {
		t.Fatal(err)
	}
	if fb.Errors != 0 || fb.Task.N != 4 || fb.Agent.N != 4 || fb.Task.P50 <= 0 {
		t.Fatalf("first byte: %+v", fb)
	}
	if fb.Held == 0 || fb.Undelivered != 0 {
		t.Fatalf("first byte: %d packets held, %d undelivered", fb.Held, fb.Undelivered)
	}

	task, err := p.DeliveredTask(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer task.End()
	w, err := p.WhoIs(100, task.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if w.Agent.N != 100 || w.Task.N != 100 {
		t.Fatalf("whois: %+v", w)
	}

	for _, f := range []taskbench.Flows{{Dial: p.A.Dial, From: p.A.Addr()}, {Dial: task.Dial, From: task.Addr()}} {
		f.Addr, f.Concurrency, f.Duration = p.FlowAddr(), 4, 300*time.Millisecond
		r, err := f.Run(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if r.Connections == 0 || r.Errors != 0 {
			t.Fatalf("flows: %+v", r)
		}
	}
}

// BenchmarkWhoIs is B.WhoIs of A's address and of a task of A's that B
// accepted.
func BenchmarkWhoIs(b *testing.B) {
	p := newPair(b)
	task, err := p.DeliveredTask(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	defer task.End()
	b.Run("agent", func(b *testing.B) {
		addr := p.A.Addr()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := p.B.WhoIs(addr); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("task", func(b *testing.B) {
		addr := task.Addr()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := p.B.WhoIs(addr); err != nil {
				b.Fatal(err)
			}
		}
	})
}
