package lru

import "testing"

func TestMap(t *testing.T) {
	m := New[int, int](3)
	for i := range 5 {
		m.Put(i, i)
	}
	if m.Len() != 3 || !m.Full() {
		t.Fatalf("len %d", m.Len())
	}
	if _, ok := m.Get(1); ok {
		t.Fatal("the least recently written entry kept")
	}
	m.Put(2, 20) // rewritten: now the most recent
	m.Put(5, 5)  // forgets 3, not 2
	if v, ok := m.Get(2); !ok || v != 20 {
		t.Fatal("a rewritten entry forgotten")
	}
	if _, ok := m.Get(3); ok {
		t.Fatal("3 kept")
	}
	if v, ok := m.Take(4); !ok || v != 4 || m.Len() != 2 {
		t.Fatal("take")
	}
	m.Expire(func(v int) bool { return v > 10 })
	if k, _, ok := m.Oldest(); !ok || k != 5 || m.Len() != 1 {
		t.Fatalf("expire: oldest %d, len %d", k, m.Len())
	}
}

// BenchmarkPutFull is the cost of a new key in a full map: constant,
// whatever its size.
func BenchmarkPutFull(b *testing.B) {
	m := New[int, int](1 << 16)
	for i := range 1 << 16 {
		m.Put(i, i)
	}
	b.ResetTimer()
	for i := range b.N {
		m.Put(1<<16+i, i)
	}
}
