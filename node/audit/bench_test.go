package audit

import (
	"context"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkSubmit measures sustained appends, records submitted as the
// packet filter will (pipelined, never waiting), with a checkpoint every
// second, until every record is integrated. It reports records per second
// and the bytes on disk per record (full tiles and bundles; the partial
// ones Tessera rewrites as a bundle fills are collected within a minute).
func BenchmarkSubmit(b *testing.B) {
	posix := func(b *testing.B) (Storage, string) { d := b.TempDir(); return POSIX(d), d }
	for _, tc := range []struct {
		name    string
		batch   int
		storage func(b *testing.B) (Storage, string)
	}{
		{"posix/batch=512", 512, posix},
		{"posix/batch=1024", 1024, posix},
		{"posix/batch=2048", 2048, posix},
		{"posix/batch=4096", 4096, posix},
		{"memory", 0, func(*testing.B) (Storage, string) { return Memory(1 << 22), "" }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := context.Background()
			s, dir := tc.storage(b)
			l, err := Open(ctx, Config{Key: testKey(b), TrustDomain: "example.org", Storage: s, BatchSize: tc.batch})
			if err != nil {
				b.Fatal(err)
			}
			recs := make([]Record, 1024)
			for i := range recs {
				recs[i] = flowEnd(i, NewTraceID())
			}
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				for l.Submit(recs[i%len(recs)]) != nil {
					time.Sleep(time.Millisecond) // the queue is full: the log is the bottleneck
				}
			}
			for l.Stats().Appended < uint64(b.N) {
				time.Sleep(time.Millisecond)
			}
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/el.Seconds(), "records/s")
			if err := l.Close(); err != nil {
				b.Fatal(err)
			}
			if dir != "" {
				b.ReportMetric(float64(diskBytes(b, dir))/float64(b.N), "disk-B/record")
			}
		})
	}
}

// diskBytes sums the sizes of the log's full tiles and bundles and its
// checkpoint, leaving out the partial ones (".p/") garbage collection
// removes.
func diskBytes(b *testing.B, dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.Contains(p, ".p/") || strings.Contains(p, "/.state/") || strings.Contains(p, "/.agent6/") {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// BenchmarkAppendLatency measures the time from Append to the record's
// integration (its acknowledgement), with conc appenders at once: the
// median and 99th percentile per call.
func BenchmarkAppendLatency(b *testing.B) {
	for _, conc := range []int{1, 64} {
		b.Run(map[int]string{1: "alone", 64: "64-concurrent"}[conc], func(b *testing.B) {
			ctx := context.Background()
			l, err := Open(ctx, Config{Key: testKey(b), Storage: POSIX(b.TempDir())})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			rec := flowEnd(1, NewTraceID())
			var mu sync.Mutex
			lat := make([]time.Duration, 0, b.N)
			var wg sync.WaitGroup
			per := (b.N + conc - 1) / conc
			b.ResetTimer()
			for range conc {
				wg.Go(func() {
					for range per {
						t := time.Now()
						if _, err := l.Append(ctx, rec); err != nil {
							b.Error(err)
							return
						}
						d := time.Since(t)
						mu.Lock()
						lat = append(lat, d)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}

// BenchmarkCheckpointLatency measures the time from Append to a checkpoint
// covering the record, with checkpoints every second: what a witness or a
// trace query waits for a new record.
func BenchmarkCheckpointLatency(b *testing.B) {
	ctx := context.Background()
	l, err := Open(ctx, Config{Key: testKey(b), Storage: POSIX(b.TempDir())})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	rec := flowEnd(1, NewTraceID())
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t := time.Now()
		i, err := l.Append(ctx, rec)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := l.AwaitCheckpoint(ctx, i); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
}

func BenchmarkEncode(b *testing.B) {
	r := flowEnd(7, NewTraceID())
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = r.AppendEncode(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(buf)), "bytes/record")
}

func BenchmarkDecode(b *testing.B) {
	r := flowEnd(7, NewTraceID())
	enc, _ := r.Encode()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(enc); err != nil {
			b.Fatal(err)
		}
	}
}
