package limit

import (
	"testing"
	"time"
)

func TestKeyed(t *testing.T) {
	now := time.Now()
	l := NewKeyed[int](1, 2, 100, 100, 2)
	if !l.Allow(1, 1, now) || !l.Allow(1, 1, now) || l.Allow(1, 1, now) {
		t.Fatal("key 1: want its burst of 2, then no")
	}
	if !l.Allow(1, 1, now.Add(time.Second)) {
		t.Fatal("key 1 did not refill")
	}
	l.Allow(2, 1, now)
	// Full, both busy: a new key gets only the global bucket, no bucket
	// of its own, and pushes out nobody.
	if !l.Allow(3, 1, now) || l.Len() != 2 {
		t.Fatalf("a new key while full: len %d", l.Len())
	}
	if l.Allow(1, 1, now.Add(time.Second)) {
		t.Fatal("key 1's bucket was replaced")
	}
	// Key 2 idle long enough: a new key takes its place.
	later := now.Add(l.Idle + 2*time.Second)
	l.Allow(1, 1, later)
	if !l.Allow(4, 1, later) || l.Len() != 2 {
		t.Fatal("a new key did not take an idle one's place")
	}
	// The global bucket bounds all keys together.
	g := NewKeyed[int](100, 100, 1, 3, 10)
	n := 0
	for k := range 10 {
		if g.Allow(k, 1, now) {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("%d allowed in all, want the global burst of 3", n)
	}
}

// BenchmarkAllowRefused is what a key over its rate costs, with the table
// full.
func BenchmarkAllowRefused(b *testing.B) {
	now := time.Now()
	l := NewKeyed[int](10, 20, 2000, 4000, 4096)
	for k := range 4096 {
		l.Allow(k, 1, now)
	}
	for range 30 {
		l.Allow(7, 1, now)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		l.Allow(7, 1, now)
	}
}
