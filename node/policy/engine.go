package policy

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agent6/agent6/identity"
)

// Config configures an Engine. Zero values are the defaults.
type Config struct {
	// Bundle holds the CAs whose documents Apply accepts: a document of a
	// trust domain must be signed by a CA the bundle holds for it. Nil:
	// Apply refuses every document (Install still works).
	Bundle *identity.Bundle
	// CacheSize bounds the decision cache (default 65,536 decisions).
	CacheSize int
	// Logger receives applied documents and rate-limited refusals. Nil
	// discards.
	Logger *slog.Logger
}

// Engine holds the policy documents in force, one per trust domain, and
// decides requests with them. Decide is meant for the packet path: once per
// new flow, answered from a cache when the same question was asked at the
// same generation. An Engine is safe for concurrent use; its zero value is
// not usable (New).
type Engine struct {
	cfg Config
	log *slog.Logger

	mu    sync.Mutex // serialises changes to state
	state atomic.Pointer[snapshot]

	cache decisionCache
	ents  atomic.Pointer[entityCache] // of the current generation

	hits, misses atomic.Uint64
	decisions    [numReasons]atomic.Uint64
	refused      [len(refusalReasons) + 1]atomic.Uint64 // by refusalIndex
	applied      atomic.Uint64
	duplicates   atomic.Uint64
	lastLog      atomic.Int64 // unix nanos of the last refusal log
}

const refusalLogEvery = 10 * time.Second

// New returns an engine with no documents: every decision is the default
// (allow inside a trust domain, deny across) until documents arrive.
func New(cfg Config) *Engine {
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = 1 << 16
	}
	e := &Engine{cfg: cfg, log: cfg.Logger}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	e.state.Store(&snapshot{gen: 1, docs: map[string]*Document{}})
	e.cache.init(cfg.CacheSize)
	return e
}

// Decide answers r: allow or deny, why, the deciding policies of both
// trust domains, and the obligations. It does not block; it costs a cache
// lookup when the same (principal, resource, action, proto, port) was
// decided at the current generation, and otherwise one evaluation of the
// policies whose scopes could match, per trust domain involved.
//
// The cache is keyed by addresses: the caller must call Invalidate when
// what it knows of any agent or task changes (membership, a card, a
// delegation), so that a decision made from the old facts is not reused.
func (e *Engine) Decide(r *Request) Decision {
	snap := e.state.Load()
	k := keyOf(r)
	if d, ok := e.cache.get(k, snap.gen); ok {
		e.hits.Add(1)
		e.decisions[d.Reason].Add(1)
		return *d
	}
	e.misses.Add(1)
	d := decide(snap, r, e.entityCache(snap.gen), nil)
	e.cache.put(k, snap.gen, &d)
	e.decisions[d.Reason].Add(1)
	return d
}

// entityCache returns the entity cache of generation gen, starting a new
// one when the generation has moved on.
func (e *Engine) entityCache(gen uint64) *entityCache {
	c := e.ents.Load()
	if c != nil && c.gen == gen {
		return c
	}
	if c != nil && c.gen > gen { // a decision that began before a change
		return nil
	}
	n := newEntityCache(gen, e.cfg.CacheSize)
	if e.ents.CompareAndSwap(c, n) {
		return n
	}
	return nil
}

// Invalidate bumps the generation, so that no cached decision is reused.
// Call it on every change of membership (an agent admitted, changed or
// removed; a task started or ended; a card or delegation replaced).
func (e *Engine) Invalidate() {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.state.Load()
	e.state.Store(&snapshot{gen: old.gen + 1, docs: old.docs})
}

// Generation returns the current generation. It rises on every change of
// documents and every Invalidate.
func (e *Engine) Generation() uint64 { return e.state.Load().gen }

// Apply verifies a signed document and puts it in force for its trust
// domain, replacing the one there. It refuses, with an *Error wrapping one
// of the sentinel errors (counted per RefusalReason), a document that is
// malformed, too large, not signed by a CA of its domain in the bundle,
// not newer than the one in force (a replay), or whose Cedar text or tests
// fail; the document in force then stays in force. The same document
// again (same serial, same bytes, as gossip delivers) returns the
// document in force and no error. Cheap refusals come before signature
// checks and parsing.
func (e *Engine) Apply(rec identity.SignedRecord) (*Document, error) {
	d, err := e.apply(rec)
	if err != nil {
		e.refuse(err)
	}
	return d, err
}

func (e *Engine) apply(rec identity.SignedRecord) (*Document, error) {
	if rec.Type != identity.RecordPolicy {
		return nil, &Error{Reason: ErrMalformed, Msg: fmt.Sprintf("%s record, want %s", rec.Type, identity.RecordPolicy)}
	}
	h, err := ParseHeader(rec.Payload)
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(rec.Payload)
	if cur := e.state.Load().docs[h.TrustDomain]; cur != nil && h.Serial <= cur.Serial {
		if h.Serial == cur.Serial && cur.digest == digest {
			e.duplicates.Add(1)
			return cur, nil
		}
		return nil, replay(h, cur)
	}
	if err := checkSigner(e.cfg.Bundle, h, rec); err != nil {
		return nil, err
	}
	d, err := decodeAndTest(rec.Payload)
	if err != nil {
		return nil, err
	}
	d.digest = digest
	if err := e.Install(d); err != nil {
		return nil, err
	}
	return d, nil
}

func replay(h Header, cur *Document) error {
	return &Error{Reason: ErrReplay, Doc: fmt.Sprintf("%s serial %d", h.TrustDomain, h.Serial),
		Msg: fmt.Sprintf("serial %d is in force", cur.Serial)}
}

// Install puts a compiled document in force for its trust domain without
// checking who signed it: for a document Verify returned, or for offline
// tools and tests. Its serial must be above the one in force (ErrReplay).
func (e *Engine) Install(d *Document) error {
	if d.c == nil {
		return &Error{Reason: ErrMalformed, Doc: d.String(), Msg: "not compiled (use Compile, Decode or Verify)"}
	}
	e.mu.Lock()
	old := e.state.Load()
	if cur := old.docs[d.TrustDomain]; cur != nil && d.Serial <= cur.Serial {
		e.mu.Unlock()
		return replay(Header{d.TrustDomain, d.Serial}, cur)
	}
	docs := make(map[string]*Document, len(old.docs)+1)
	for td, doc := range old.docs {
		docs[td] = doc
	}
	docs[d.TrustDomain] = d
	e.state.Store(&snapshot{gen: old.gen + 1, docs: docs})
	e.mu.Unlock()
	e.applied.Add(1)
	e.log.Info("policy: document in force", "trust_domain", d.TrustDomain, "serial", d.Serial, "policies", len(d.c.policies), "name", d.Name)
	return nil
}

// SetBundle replaces the bundle Apply verifies with. Documents of trust
// domains the new bundle does not hold are dropped (their agents fall back
// to the default, which denies them across domains).
func (e *Engine) SetBundle(b *identity.Bundle) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cfg.Bundle = b
	old := e.state.Load()
	docs := make(map[string]*Document, len(old.docs))
	for td, doc := range old.docs {
		if b != nil && len(b.Certificates(td)) > 0 {
			docs[td] = doc
		}
	}
	e.state.Store(&snapshot{gen: old.gen + 1, docs: docs})
}

// Document returns the document in force for trustDomain, or nil.
func (e *Engine) Document(trustDomain string) *Document { return e.state.Load().docs[trustDomain] }

// Documents returns the documents in force, by trust domain.
func (e *Engine) Documents() []*Document {
	docs := e.state.Load().docs
	out := make([]*Document, 0, len(docs))
	for _, d := range docs {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b *Document) int { return strings.Compare(a.TrustDomain, b.TrustDomain) })
	return out
}

func (e *Engine) refuse(err error) {
	e.refused[refusalIndex(err)].Add(1)
	now := time.Now().UnixNano()
	last := e.lastLog.Load()
	if now-last >= int64(refusalLogEvery) && e.lastLog.CompareAndSwap(last, now) {
		e.log.Warn("policy: document refused", "reason", RefusalReason(err), "err", err)
	}
}

// Stats are an engine's counters since it was made.
type Stats struct {
	Generation   uint64
	Documents    int
	CacheHits    uint64
	CacheMisses  uint64
	CacheEntries int
	Decisions    map[string]uint64 // by Reason
	Applied      uint64            // documents put in force
	Duplicates   uint64            // the document in force, delivered again
	Refused      map[string]uint64 // by RefusalReason
}

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats {
	snap := e.state.Load()
	s := Stats{
		Generation:   snap.gen,
		Documents:    len(snap.docs),
		CacheHits:    e.hits.Load(),
		CacheMisses:  e.misses.Load(),
		CacheEntries: e.cache.len(),
		Decisions:    make(map[string]uint64, numReasons),
		Applied:      e.applied.Load(),
		Duplicates:   e.duplicates.Load(),
		Refused:      make(map[string]uint64, len(e.refused)),
	}
	for i := range e.decisions {
		s.Decisions[Reason(i).String()] = e.decisions[i].Load()
	}
	for i, name := range RefusalReasons() {
		s.Refused[name] = e.refused[i].Load()
	}
	return s
}

// cacheKey is what a decision depends on besides the generation.
type cacheKey struct {
	principal, resource netip.Addr
	action              Action
	proto               Proto
	port                uint16
}

func keyOf(r *Request) cacheKey {
	k := cacheKey{principal: r.Principal.Addr(), resource: r.Resource.Addr(), action: r.Action}
	if r.Action == ActionConnect {
		k.proto, k.port = r.Proto, r.Port
	}
	return k
}

const cacheShards = 16

// decisionCache is a bounded map of decisions, sharded to spread lock
// traffic. An entry made at an older generation is a miss. A full shard
// drops an arbitrary eighth of its entries (Go's map order is random)
// before it takes a new one.
type decisionCache struct {
	shards   [cacheShards]cacheShard
	perShard int
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[cacheKey]cacheEntry
}

type cacheEntry struct {
	gen uint64
	d   *Decision
}

func (c *decisionCache) init(size int) {
	c.perShard = max(1, size/cacheShards)
	for i := range c.shards {
		c.shards[i].m = make(map[cacheKey]cacheEntry)
	}
}

func (c *decisionCache) shard(k cacheKey) *cacheShard {
	p, r := k.principal.As16(), k.resource.As16()
	h := p[15] ^ p[14]<<1 ^ r[15] ^ r[13]<<2 ^ byte(k.port) ^ byte(k.port>>8)
	return &c.shards[h%cacheShards]
}

func (c *decisionCache) get(k cacheKey, gen uint64) (*Decision, bool) {
	s := c.shard(k)
	s.mu.RLock()
	e, ok := s.m[k]
	s.mu.RUnlock()
	if !ok || e.gen != gen {
		return nil, false
	}
	return e.d, true
}

func (c *decisionCache) put(k cacheKey, gen uint64, d *Decision) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[k]; !ok && len(s.m) >= c.perShard {
		drop := max(1, c.perShard/8)
		for k := range s.m {
			delete(s.m, k)
			if drop--; drop == 0 {
				break
			}
		}
	}
	s.m[k] = cacheEntry{gen: gen, d: d}
}

func (c *decisionCache) len() int {
	n := 0
	for i := range c.shards {
		c.shards[i].mu.RLock()
		n += len(c.shards[i].m)
		c.shards[i].mu.RUnlock()
	}
	return n
}
