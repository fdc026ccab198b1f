package audit

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/transparency-dev/tessera/api/layout"
	"github.com/transparency-dev/tessera/client"
)

// TestServeTiles reads a log over its tlog-tiles HTTP API with Tessera's
// own client and with ours, and checks every record's inclusion.
func TestServeTiles(t *testing.T) {
	ctx := ctxT(t)
	l := openTest(t, Config{Storage: POSIX(t.TempDir())})
	var allowed atomic.Bool
	allowed.Store(true)
	srv := httptest.NewServer(l.Handler(func(peer netip.Addr) bool {
		return allowed.Load() && peer == netip.MustParseAddr("127.0.0.1")
	}))
	defer srv.Close()
	f := HTTPFetcher(srv.Client(), srv.URL)

	trace := NewTraceID()
	for i := range 300 {
		if err := l.Submit(flowEnd(i, trace)); err != nil {
			t.Fatal(err)
		}
	}
	cp, err := l.AwaitCheckpoint(ctx, 299)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := f.ReadCheckpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	served, err := ParseCheckpoint(raw, l.Origin(), l.Verifier())
	if err != nil {
		t.Fatal(err)
	}
	if served.Size < cp.Size {
		t.Fatalf("served checkpoint %d, latest %d", served.Size, cp.Size)
	}
	// Tessera's client builds proofs from our tiles.
	pb, err := client.NewProofBuilder(ctx, served.Size, f.ReadTile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pb.InclusionProof(ctx, 299); err != nil {
		t.Fatal(err)
	}
	if _, err := client.GetEntryBundle(ctx, f.ReadEntryBundle, 1, served.Size); err != nil {
		t.Fatal(err)
	}
	for _, i := range []uint64{0, 17, 255, 256, 299} {
		p, err := FetchProven(ctx, f, served, i)
		if err != nil {
			t.Fatal(err)
		}
		if p.Record.Trace != trace {
			t.Fatalf("record %d: trace %v", i, p.Record.Trace)
		}
	}
	old := l.History()[0]
	if err := CheckConsistency(ctx, f, old, served); err != nil {
		t.Fatal(err)
	}

	// Refusals: a path that is not the API, a tile beyond the tree, a
	// method, and a caller the hook refuses.
	for path, want := range map[string]int{
		"/":                      http.StatusNotFound,
		"/tile/0/x999/999":       http.StatusNotFound,
		"/tile/0/abc":            http.StatusNotFound,
		"/tile/entries/001.p/0":  http.StatusNotFound,
		"/.agent6/checkpoints":   http.StatusNotFound,
		"/.state/treeState":      http.StatusNotFound,
		"/tile/99/000":           http.StatusNotFound,
		"/tile/0/000":            http.StatusOK,
		"/tile/entries/001.p/44": http.StatusOK,
	} {
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	resp, err := srv.Client().Post(srv.URL+"/checkpoint", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
	allowed.Store(false)
	if _, err := f.ReadCheckpoint(ctx); !errors.Is(err, ErrForbidden) {
		t.Fatalf("refused caller: %v", err)
	}
	s := l.ServeStats()
	if s.Forbidden != 1 || s.BadRequest != 1 || s.NotFound != 7 {
		t.Fatalf("serve stats %+v", s)
	}
	if l.Handler(nil) == nil {
		t.Fatal("no handler")
	}
	rec := httptest.NewRecorder()
	l.Handler(nil).ServeHTTP(rec, httptest.NewRequest("GET", "/checkpoint", nil))
	if rec.Code != http.StatusForbidden {
		t.Fatalf("nil authorizer: %d", rec.Code)
	}
}

// TestFetchRefusesBadData checks that entries and tiles that do not match
// a checkpoint are refused, never trusted.
func TestFetchRefusesBadData(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	l := openTest(t, Config{Storage: POSIX(dir)})
	cp := appendN(t, l, 20)
	if _, err := FetchProven(ctx, DirFetcher(dir), cp, 5); err != nil {
		t.Fatal(err)
	}
	// An entry bundle changed on disk.
	bpath := filepath.Join(dir, layout.EntriesPath(0, 20))
	orig, err := os.ReadFile(bpath)
	if err != nil {
		t.Fatal(err)
	}
	changed := bytes.Clone(orig)
	changed[len(changed)-1] ^= 1
	if err := os.WriteFile(bpath, changed, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := FetchProven(ctx, DirFetcher(dir), cp, 19); !errors.Is(err, ErrProof) && !errors.Is(err, ErrRecord) {
		t.Fatalf("changed entry: %v", err)
	}
	if err := os.WriteFile(bpath, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	// Tiles changed in transit; tiles of the wrong length.
	if _, err := FetchProven(ctx, tamperTiles{DirFetcher(dir)}, cp, 3); !errors.Is(err, ErrProof) {
		t.Fatalf("changed tile: %v", err)
	}
	if _, err := FetchProven(ctx, shortTiles{DirFetcher(dir)}, cp, 3); err == nil {
		t.Fatal("short tile accepted")
	}
	if _, err := FetchProven(ctx, DirFetcher(dir), cp, 20); !errors.Is(err, ErrNotFound) {
		t.Fatalf("index beyond the checkpoint: %v", err)
	}
	if _, err := DirFetcher(t.TempDir()).ReadCheckpoint(ctx); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("empty dir: %v", err)
	}
}

type shortTiles struct{ Fetcher }

func (f shortTiles) ReadTile(ctx context.Context, level, index uint64, p uint8) ([]byte, error) {
	t, err := f.Fetcher.ReadTile(ctx, level, index, p)
	if len(t) > 0 {
		t = t[:len(t)-1]
	}
	return t, err
}

// TestHTTPFetcherBounds checks that an oversized answer is cut off.
func TestHTTPFetcherBounds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, io.LimitReader(zeros{}, 1<<20))
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f := HTTPFetcher(srv.Client(), srv.URL)
	if _, err := f.ReadCheckpoint(ctx); err == nil {
		t.Fatal("oversized checkpoint accepted")
	}
	if _, err := f.ReadTile(ctx, 0, 0, 0); err == nil {
		t.Fatal("oversized tile accepted")
	}
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}
