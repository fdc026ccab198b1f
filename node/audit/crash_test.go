package audit

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/transparency-dev/tessera/api/layout"

	"github.com/agent6/agent6/identity"
)

const (
	crashEnvDir = "AGENT6_AUDIT_CRASH_DIR"
	crashEnvKey = "AGENT6_AUDIT_CRASH_KEY"
	crashBurst  = 1000
	crashKillAt = 300 // acknowledgements read before the kill
)

// crashChild is the child side of TestCrashDurability: it appends a burst
// of crashBurst records from 16 goroutines and prints "ack <index> <n>"
// for each acknowledged one (record n at index), then waits to be killed.
func crashChild() {
	key, err := identity.LoadPrivateKey(os.Getenv(crashEnvKey))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	ctx := context.Background()
	l, err := Open(ctx, Config{Key: key, Storage: POSIX(os.Getenv(crashEnvDir)), CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	var next atomic.Int64
	var out sync.Mutex
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				n := int(next.Add(1)) - 1
				if n >= crashBurst {
					return
				}
				idx, err := l.Append(ctx, flowEnd(n, TraceID{}))
				out.Lock()
				if err != nil {
					fmt.Println("error", err)
				} else {
					fmt.Printf("ack %d %d\n", idx, n)
				}
				out.Unlock()
			}
		})
	}
	wg.Wait()
	fmt.Println("done")
	select {} // until killed
}

// TestCrashDurability kills a process with SIGKILL in the middle of a burst
// of appends and checks that every record it acknowledged is in the log
// after a restart, that the log continues from the last checkpoint before
// the crash (its consistency proof verifies) and that the log verifies.
func TestCrashDurability(t *testing.T) {
	if os.Getenv(crashEnvDir) != "" {
		crashChild()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	key := testKey(t)
	keyFile := filepath.Join(t.TempDir(), "agent.key")
	if err := identity.WritePrivateKey(keyFile, key, false); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashDurability$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnvDir+"="+dir, crashEnvKey+"="+keyFile)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	acked := map[uint64]int{} // index → record number
	done, killed := false, false
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 3 && f[0] == "ack":
			idx, err1 := strconv.ParseUint(f[1], 10, 64)
			n, err2 := strconv.Atoi(f[2])
			if err1 != nil || err2 != nil {
				t.Fatalf("child said %q", sc.Text())
			}
			acked[idx] = n
		case len(f) == 1 && f[0] == "done":
			done = true
		default:
			t.Fatalf("child said %q", sc.Text())
		}
		if len(acked) == crashKillAt && !killed {
			if err := cmd.Process.Kill(); err != nil { // SIGKILL
				t.Fatal(err)
			}
			killed = true
		}
	}
	cmd.Wait()
	if !killed {
		t.Fatalf("child ended before %d acknowledgements (%d)", crashKillAt, len(acked))
	}
	t.Logf("killed after %d acknowledgements (burst done before the kill: %v)", len(acked), done)

	// The last checkpoint the crashed process published.
	raw, err := os.ReadFile(filepath.Join(dir, layout.CheckpointPath))
	if err != nil {
		t.Fatal(err)
	}
	origin, _ := Origin("", mustAddr(t, key))
	v, _ := NewVerifier(origin, key.Public())
	before, err := ParseCheckpoint(raw, origin, v)
	if err != nil {
		t.Fatal(err)
	}

	l, err := Open(ctx, Config{Key: key, Storage: POSIX(dir), CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for idx, n := range acked {
		got, _, err := l.Entry(ctx, idx)
		if err != nil {
			t.Fatalf("acknowledged entry %d (record %d) lost: %v", idx, n, err)
		}
		want := flowEnd(n, TraceID{})
		if !got.Equal(&want) {
			t.Fatalf("entry %d is not record %d", idx, n)
		}
	}
	// The log continues: a new record, a new checkpoint, consistent with
	// the one before the crash.
	idx, err := l.Append(ctx, flowEnd(crashBurst, TraceID{}))
	if err != nil {
		t.Fatal(err)
	}
	after, err := l.AwaitCheckpoint(ctx, idx)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckConsistency(ctx, l.Fetcher(), before, after); err != nil {
		t.Fatalf("consistency from the checkpoint before the crash (%d) to %d: %v", before.Size, after.Size, err)
	}
	rep, err := l.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !containsSize(rep.Consistent, before.Size) && before.Size != 0 {
		t.Fatalf("Verify did not check the checkpoint before the crash: %v", rep.Consistent)
	}
	t.Logf("checkpoint before the crash %d, after %d, acknowledged %d", before.Size, after.Size, len(acked))
}

func mustAddr(t *testing.T, k identity.PrivateKey) netip.Addr {
	t.Helper()
	a, err := k.Public().Addr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}
