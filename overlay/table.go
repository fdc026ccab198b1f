package overlay

import "container/list"

// table is a map bounded to max entries that makes room for a new one by
// forgetting the least recently written, in O(1): for the tables a
// stranger's datagrams can grow (one entry per endpoint). Not safe for
// concurrent use.
type table[K comparable, V any] struct {
	max   int
	m     map[K]*list.Element
	order *list.List // of *tableEntry[K, V], least recently written at the back
}

type tableEntry[K comparable, V any] struct {
	k K
	v V
}

func newTable[K comparable, V any](max int) *table[K, V] {
	return &table[K, V]{max: max, m: make(map[K]*list.Element), order: list.New()}
}

func (t *table[K, V]) get(k K) (V, bool) {
	if e := t.m[k]; e != nil {
		return e.Value.(*tableEntry[K, V]).v, true
	}
	var zero V
	return zero, false
}

// put writes k, forgetting the least recently written entry if full.
func (t *table[K, V]) put(k K, v V) {
	if e := t.m[k]; e != nil {
		e.Value.(*tableEntry[K, V]).v = v
		t.order.MoveToFront(e)
		return
	}
	if len(t.m) >= t.max {
		old := t.order.Back()
		t.order.Remove(old)
		delete(t.m, old.Value.(*tableEntry[K, V]).k)
	}
	t.m[k] = t.order.PushFront(&tableEntry[K, V]{k: k, v: v})
}

func (t *table[K, V]) delete(k K) {
	if e := t.m[k]; e != nil {
		t.order.Remove(e)
		delete(t.m, k)
	}
}

func (t *table[K, V]) len() int { return len(t.m) }
