package taskbench_test

import (
	"context"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agent6/agent6/node"
)

func TestScratchStall(t *testing.T) {
	if os.Getenv("SCRATCH") == "" {
		t.Skip()
	}
	p := newPair(t)
	ctx := context.Background()
	for _, churn := range []bool{false, true} {
		var stop atomic.Bool
		var wg sync.WaitGroup
		tasks := 0
		if churn {
			wg.Go(func() {
				for !stop.Load() {
					task, err := p.A.StartTask(ctx, node.TaskSpec{TTL: time.Minute})
					if err != nil {
						t.Error(err)
						return
					}
					c, err := task.Dial(ctx, "tcp", p.HelloAddr())
					if err == nil {
						io.ReadAll(c)
						c.Close()
					}
					task.End()
					tasks++
				}
			})
		}
		var calls, stalls int
		var worst time.Duration
		deadline := time.Now().Add(8 * time.Second)
		for time.Now().Before(deadline) {
			t0 := time.Now()
			c, err := p.A.Dial(ctx, "tcp", p.HelloAddr())
			if err != nil {
				t.Fatal(err)
			}
			io.ReadAll(c)
			c.Close()
			d := time.Since(t0)
			calls++
			if d > 500*time.Millisecond {
				stalls++
			}
			worst = max(worst, d)
		}
		stop.Store(true)
		wg.Wait()
		s, _ := p.B.Status()
		t.Logf("churn=%v: %d agent calls, %d over 500ms, worst %v; %d tasks started+ended; B drops %v", churn, calls, stalls, worst, tasks, s.Filter.Drops)
	}
}
