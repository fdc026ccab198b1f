package policy

import (
	"iter"
	"math/bits"

	cedar "github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/ast"
	"github.com/cedar-policy/cedar-go/types"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
)

// bitset is a set of policy indexes.
type bitset []uint64

func newBitset(n int) bitset { return make(bitset, (n+63)/64) }

func (b bitset) set(i int) { b[i/64] |= 1 << (i % 64) }
func (b bitset) or(o bitset) {
	for i := range o {
		b[i] |= o[i]
	}
}
func (b bitset) and(o bitset) {
	for i := range b {
		b[i] &= o[i]
	}
}

func (b bitset) count() int {
	n := 0
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return n
}

// scopeIndex maps one scope (principal or resource) to the policies whose
// scope on that side could match a given entity. A policy sits in exactly
// one of its sets: all (no constraint), eq[uid] (== uid), in[uid] (in uid,
// and is T in uid), is[T] (is T).
type scopeIndex struct {
	all bitset
	eq  map[types.EntityUID]bitset
	in  map[types.EntityUID]bitset
	is  map[types.EntityType]bitset
}

func newScopeIndex(n int) scopeIndex {
	return scopeIndex{
		all: newBitset(n),
		eq:  make(map[types.EntityUID]bitset),
		in:  make(map[types.EntityUID]bitset),
		is:  make(map[types.EntityType]bitset),
	}
}

func setIn[K comparable](m map[K]bitset, k K, n, i int) {
	b, ok := m[k]
	if !ok {
		b = newBitset(n)
		m[k] = b
	}
	b.set(i)
}

func (s *scopeIndex) add(scope any, n, i int) {
	switch sc := scope.(type) {
	case xast.ScopeTypeEq:
		setIn(s.eq, sc.Entity, n, i)
	case xast.ScopeTypeIn:
		setIn(s.in, sc.Entity, n, i)
	case xast.ScopeTypeIsIn:
		setIn(s.in, sc.Entity, n, i)
	case xast.ScopeTypeIs:
		setIn(s.is, sc.Type, n, i)
	default: // ScopeTypeAll, and anything newer: never sliced away
		s.all.set(i)
	}
}

// candidates ORs into dst the policies whose scope could match the entity
// uid whose ancestors (itself included) are anc.
func (s *scopeIndex) candidates(dst bitset, uid types.EntityUID, anc []types.EntityUID) {
	dst.or(s.all)
	if b, ok := s.eq[uid]; ok {
		dst.or(b)
	}
	if b, ok := s.is[uid.Type]; ok {
		dst.or(b)
	}
	if len(s.in) == 0 {
		return
	}
	for _, a := range anc {
		if b, ok := s.in[a]; ok {
			dst.or(b)
		}
	}
}

// index slices a document's policies by principal scope, resource scope
// and action, so that a request is evaluated against only the policies
// whose scopes could match it: the candidates are a superset of the
// policies that match, so the decision is the same as over the whole set
// (TestSliceEqualsFull checks this over random policies and requests).
type index struct {
	n         int
	principal scopeIndex
	resource  scopeIndex
	action    [numActions]bitset
}

func buildIndex(ps []compiledPolicy) *index {
	n := len(ps)
	x := &index{n: n, principal: newScopeIndex(n), resource: newScopeIndex(n)}
	for a := range x.action {
		x.action[a] = newBitset(n)
	}
	for i := range ps {
		a := ps[i].p.AST()
		x.principal.add(a.Principal, n, i)
		x.resource.add(a.Resource, n, i)
		for act, ok := range ps[i].actions {
			if ok {
				x.action[act].set(i)
			}
		}
	}
	return x
}

// actionsOf returns which of the actions a policy's action scope admits.
// There are no action groups, so "in" is "==".
func actionsOf(p *ast.Policy) [numActions]bool {
	var out [numActions]bool
	admit := func(uid types.EntityUID) {
		for a, u := range actionUIDs {
			if u == uid {
				out[a] = true
			}
		}
	}
	switch sc := p.Action.(type) {
	case xast.ScopeTypeEq:
		admit(sc.Entity)
	case xast.ScopeTypeIn:
		admit(sc.Entity)
	case xast.ScopeTypeInSet:
		for _, e := range sc.Entities {
			admit(e)
		}
	default:
		for a := range out {
			out[a] = true
		}
	}
	return out
}

// candidates returns the policies that could match r, as a bitset.
func (x *index) candidates(r *types.Request, action Action, ents *entities, scratch []types.EntityUID) bitset {
	p := newBitset(x.n)
	x.principal.candidates(p, r.Principal, ents.ancestors(scratch[:0], r.Principal))
	res := newBitset(x.n)
	x.resource.candidates(res, r.Resource, ents.ancestors(scratch[:0], r.Resource))
	p.and(res)
	p.and(x.action[action])
	return p
}

// ancestors appends to dst uid and every uid it is `in` through the
// entities' parents, as Cedar's `in` computes it.
func (s *entities) ancestors(dst []types.EntityUID, uid types.EntityUID) []types.EntityUID {
	start := len(dst)
	dst = append(dst, uid)
	for i := start; i < len(dst); i++ {
		e, ok := s.Get(dst[i])
		if !ok {
			continue
		}
		for parent := range e.Parents.All() {
			seen := false
			for _, d := range dst[start:] {
				if d == parent {
					seen = true
					break
				}
			}
			if !seen {
				dst = append(dst, parent)
			}
		}
	}
	return dst
}

// policySubset presents the chosen policies of a document to
// cedar.Authorize, in document order.
type policySubset struct {
	ps  []compiledPolicy
	set bitset // nil: every policy
}

var _ cedar.PolicyIterator = policySubset{}

func (s policySubset) All() iter.Seq2[cedar.PolicyID, *cedar.Policy] {
	return func(yield func(cedar.PolicyID, *cedar.Policy) bool) {
		if s.set == nil {
			for i := range s.ps {
				if !yield(s.ps[i].cedarID, s.ps[i].p) {
					return
				}
			}
			return
		}
		for w, word := range s.set {
			for word != 0 {
				i := w*64 + bits.TrailingZeros64(word)
				word &= word - 1
				if !yield(s.ps[i].cedarID, s.ps[i].p) {
					return
				}
			}
		}
	}
}
