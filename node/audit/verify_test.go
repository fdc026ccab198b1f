package audit

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/transparency-dev/tessera/api/layout"
	"go.uber.org/goleak"
	"golang.org/x/mod/sumdb/note"
)

// TestRestartVerify appends, closes, reopens and appends again, then
// checks the log end to end, offline too, and that a lost trace index is
// rebuilt.
func TestRestartVerify(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	key := testKey(t)
	cfg := Config{Key: key, TrustDomain: "example.org", Storage: POSIX(dir), CheckpointInterval: 100 * time.Millisecond}
	trace := NewTraceID()
	open := func() *Log {
		l, err := Open(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	l := open()
	for i := range 300 {
		tr := TraceID{}
		if i%3 == 0 {
			tr = trace
		}
		if err := l.Submit(flowEnd(i, tr)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := l.Append(ctx, flowEnd(0, trace)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	if err := l.Submit(flowEnd(0, trace)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Submit after Close: %v", err)
	}
	first := l.Checkpoint()
	if first.Size != 300 {
		t.Fatalf("final checkpoint of %d entries", first.Size)
	}
	// Lose the trace index: the next Open rebuilds it from the log.
	if err := os.Remove(filepath.Join(dir, stateDirName, indexFileName)); err != nil {
		t.Fatal(err)
	}
	l = open()
	defer l.Close()
	if got := l.Checkpoint(); got.Size != 300 {
		t.Fatalf("reopened at %d", got.Size)
	}
	cp := appendN(t, l, 50)
	got, tcp, err := l.Trace(ctx, trace)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 100 || tcp.Size != cp.Size {
		t.Fatalf("trace after restart: %d records against %d, want 100 against %d", len(got), tcp.Size, cp.Size)
	}
	for _, p := range got {
		if err := p.Verify(tcp); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := l.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Size != 350 || rep.ByKind["flow_end"] != 350 || rep.Tiles < 2 {
		t.Fatalf("report %+v", rep)
	}
	if !containsSize(rep.Consistent, 300) {
		t.Fatalf("consistency from the checkpoint before the restart not checked: %v", rep.Consistent)
	}
	// Offline, with the key from the directory and with the right one.
	if _, _, err := VerifyDir(ctx, dir, ""); err != nil {
		t.Fatal(err)
	}
	if _, _, err := VerifyDir(ctx, dir, l.VerifierKey()); err != nil {
		t.Fatal(err)
	}
	otherKey, _ := VerifierKey(l.Origin(), testKey(t).Public())
	if _, _, err := VerifyDir(ctx, dir, otherKey); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("another key: %v", err)
	}
}

func containsSize(s []uint64, n uint64) bool {
	for _, v := range s {
		if v == n {
			return true
		}
	}
	return false
}

// TestVerifyDetectsTampering changes the log's files under it and checks
// that verification fails.
func TestVerifyDetectsTampering(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	key := testKey(t)
	l := openTest(t, Config{Key: key, Storage: POSIX(dir)})
	appendN(t, l, 600)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := VerifyDir(ctx, dir, ""); err != nil {
		t.Fatal(err)
	}
	flip := func(path string, at int) func() {
		p := filepath.Join(dir, path)
		orig, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b := append([]byte(nil), orig...)
		b[at] ^= 0x40
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return func() { os.WriteFile(p, orig, 0o644) }
	}
	for _, tc := range []struct {
		name string
		path string
		at   int
		want error
	}{
		{"level-0 tile", layout.TilePath(0, 1, 0), 40, ErrProof},
		{"level-1 tile", layout.TilePath(1, 0, 2), 3, ErrProof},
		{"entry data", layout.EntriesPath(0, 0), 30, ErrProof},
		{"entry kind", layout.EntriesPath(2, 600-512), 3, ErrRecord},
		{"checkpoint", layout.CheckpointPath, 2, ErrCheckpoint},
	} {
		restore := flip(tc.path, tc.at)
		_, _, err := VerifyDir(ctx, dir, "")
		restore()
		if !errors.Is(err, tc.want) {
			t.Errorf("%s changed: %v, want %v", tc.name, err, tc.want)
		}
	}
	// A checkpoint signed by the right key for another tree: the entries
	// do not hash to it.
	s, _ := NewSigner(key, l.Origin())
	cp := l.Checkpoint()
	cp.Root[0] ^= 1
	forged, _ := note.Sign(&note.Note{Text: cp.Text()}, s)
	p := filepath.Join(dir, layout.CheckpointPath)
	orig, _ := os.ReadFile(p)
	os.WriteFile(p, forged, 0o644)
	if _, _, err := VerifyDir(ctx, dir, ""); !errors.Is(err, ErrProof) {
		t.Errorf("checkpoint for another root: %v", err)
	}
	os.WriteFile(p, orig, 0o644)
	if _, _, err := VerifyDir(ctx, dir, ""); err != nil {
		t.Fatalf("restored: %v", err)
	}
}

// TestFollow checks that subscribers see every record in order, and that
// a subscriber who does not read loses records without slowing the log.
func TestFollow(t *testing.T) {
	ctx := ctxT(t)
	l := openTest(t, Config{})
	all, err := l.Subscribe(0, nil)
	if err != nil {
		t.Fatal(err)
	}
	stuck, err := l.Subscribe(1, func(r *Record) bool { return r.Kind == KindFlowEnd })
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	for i := range n {
		r := flowEnd(i, TraceID{})
		if i%10 == 0 {
			r = Record{Kind: KindAdmission, Time: t0, Subject: addrB, Outcome: OutcomeAdmitted}
		}
		if _, err := l.Append(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	for i := range uint64(n) {
		select {
		case e := <-all.C():
			if e.Index != i {
				t.Fatalf("entry %d delivered as %d", i, e.Index)
			}
			want, _, _ := l.Entry(ctx, i)
			if !e.Record.Equal(&want) {
				t.Fatalf("entry %d: record differs", i)
			}
		case <-ctx.Done():
			t.Fatalf("entry %d not delivered", i)
		}
	}
	if got := stuck.Dropped(); got != n-n/10-1 {
		t.Fatalf("stuck subscriber dropped %d, want %d", got, n-n/10-1)
	}
	if l.Stats().Followers != stuck.Dropped() {
		t.Fatalf("follow drops %d", l.Stats().Followers)
	}
	stuck.Close()
	stuck.Close()
	for range stuck.C() { // the one buffered entry, then the end
	}
	for range MaxSubscribers - 1 {
		if _, err := l.Subscribe(1, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Subscribe(1, nil); err == nil {
		t.Fatal("subscriber past the bound accepted")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-all.C(); ok {
		t.Fatal("subscription open after Close")
	}
}

// TestLifecycleLeaks checks that Close ends every goroutine, Tessera's
// included.
func TestLifecycleLeaks(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for _, s := range []Storage{Memory(0), POSIX(t.TempDir())} {
		l, err := Open(context.Background(), Config{Key: testKey(t), Storage: s, CheckpointInterval: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Append(context.Background(), flowEnd(1, NewTraceID())); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMemoryBound(t *testing.T) {
	ctx := ctxT(t)
	l := openTest(t, Config{Storage: Memory(3)})
	for i := range 3 {
		if _, err := l.Append(ctx, flowEnd(i, TraceID{})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Append(ctx, flowEnd(4, TraceID{})); !errors.Is(err, ErrFull) {
		t.Fatalf("append past the bound: %v", err)
	}
	if l.Durable() {
		t.Fatal("memory log says it is durable")
	}
}

func TestDisclose(t *testing.T) {
	ctx := ctxT(t)
	l := openTest(t, Config{})
	r := flowEnd(1, NewTraceID())
	value := []byte("tools/call search {\"q\":\"lisbon\"}")
	if err := l.Commit(&r, "request", value); err != nil {
		t.Fatal(err)
	}
	i, err := l.Append(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	d, err := l.Disclose(ctx, i, "request")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Commitment.Open(d.Salt, value); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Disclose(ctx, i, "other"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("no such commitment: %v", err)
	}
	if _, err := l.Disclose(ctx, i+1, "request"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("no such entry: %v", err)
	}
}
