// Package lru is a map bounded to a number of entries that makes room for
// a new one by forgetting the least recently written, in O(1): for the
// tables that a stranger's datagrams can grow (one entry per source or per
// endpoint), which must neither grow without bound nor be scanned when
// full.
package lru

import "container/list"

// Map is a bounded map. The zero value is not usable; see New. Not safe
// for concurrent use.
type Map[K comparable, V any] struct {
	max   int
	m     map[K]*list.Element
	order *list.List // of *entry[K, V], least recently written at the back
}

type entry[K comparable, V any] struct {
	k K
	v V
}

// New returns an empty map that holds at most max entries.
func New[K comparable, V any](max int) *Map[K, V] {
	return &Map[K, V]{max: max, m: make(map[K]*list.Element), order: list.New()}
}

// Get returns k's value without changing its age.
func (m *Map[K, V]) Get(k K) (V, bool) {
	if e := m.m[k]; e != nil {
		return e.Value.(*entry[K, V]).v, true
	}
	var zero V
	return zero, false
}

// Put writes k, making it the most recent, and forgets the least recently
// written entry if the map is full.
func (m *Map[K, V]) Put(k K, v V) {
	if e := m.m[k]; e != nil {
		e.Value.(*entry[K, V]).v = v
		m.order.MoveToFront(e)
		return
	}
	if len(m.m) >= m.max {
		m.Take(m.order.Back().Value.(*entry[K, V]).k)
	}
	m.m[k] = m.order.PushFront(&entry[K, V]{k: k, v: v})
}

// Take removes k and returns its value.
func (m *Map[K, V]) Take(k K) (V, bool) {
	e := m.m[k]
	if e == nil {
		var zero V
		return zero, false
	}
	m.order.Remove(e)
	delete(m.m, k)
	return e.Value.(*entry[K, V]).v, true
}

// Oldest returns the least recently written entry.
func (m *Map[K, V]) Oldest() (K, V, bool) {
	e := m.order.Back()
	if e == nil {
		var k K
		var v V
		return k, v, false
	}
	en := e.Value.(*entry[K, V])
	return en.k, en.v, true
}

// Expire forgets the least recently written entries while old says they
// are due.
func (m *Map[K, V]) Expire(old func(V) bool) {
	for k, v, ok := m.Oldest(); ok && old(v); k, v, ok = m.Oldest() {
		m.Take(k)
	}
}

// Len is the number of entries.
func (m *Map[K, V]) Len() int { return len(m.m) }

// Full reports whether a new key would evict one.
func (m *Map[K, V]) Full() bool { return len(m.m) >= m.max }
