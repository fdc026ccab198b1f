package membership

import "container/list"

// expiring is a map bounded to max entries that forgets the oldest
// insertion first, in O(1): for tables a peer's traffic can grow (the
// HELLOs awaiting an ACK). Not safe for concurrent use.
type expiring[K comparable, V any] struct {
	max   int
	m     map[K]*list.Element
	order *list.List // of *expEntry[K, V], oldest at the back
}

type expEntry[K comparable, V any] struct {
	k K
	v V
}

func newExpiring[K comparable, V any](max int) *expiring[K, V] {
	return &expiring[K, V]{max: max, m: make(map[K]*list.Element), order: list.New()}
}

// put adds or replaces k, making room by forgetting the oldest entry.
func (e *expiring[K, V]) put(k K, v V) {
	if el := e.m[k]; el != nil {
		el.Value.(*expEntry[K, V]).v = v
		e.order.MoveToFront(el)
		return
	}
	if len(e.m) >= e.max {
		old := e.order.Back()
		e.order.Remove(old)
		delete(e.m, old.Value.(*expEntry[K, V]).k)
	}
	e.m[k] = e.order.PushFront(&expEntry[K, V]{k: k, v: v})
}

// take removes k and returns its value.
func (e *expiring[K, V]) take(k K) (V, bool) {
	el := e.m[k]
	if el == nil {
		var zero V
		return zero, false
	}
	e.order.Remove(el)
	delete(e.m, k)
	return el.Value.(*expEntry[K, V]).v, true
}

// expire forgets the oldest entries while old says they are due.
func (e *expiring[K, V]) expire(old func(V) bool) {
	for el := e.order.Back(); el != nil && old(el.Value.(*expEntry[K, V]).v); el = e.order.Back() {
		e.order.Remove(el)
		delete(e.m, el.Value.(*expEntry[K, V]).k)
	}
}

func (e *expiring[K, V]) len() int { return len(e.m) }

// get returns k's value without changing its age.
func (e *expiring[K, V]) get(k K) (V, bool) {
	el := e.m[k]
	if el == nil {
		var zero V
		return zero, false
	}
	return el.Value.(*expEntry[K, V]).v, true
}
