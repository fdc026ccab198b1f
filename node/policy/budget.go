package policy

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cedar-policy/cedar-go/types"
	"golang.org/x/time/rate"

	"github.com/agent6/agent6/identity"
)

// ErrBudgetExceeded reports a flow refused because a budget is spent; the
// error is a *BudgetError naming which.
var ErrBudgetExceeded = errors.New("policy: budget exceeded")

// BudgetError says which budget refused a flow.
type BudgetError struct {
	Kind   string     // "rate", "bytes", "fan_out", or "table_full" (no room to track a new budget)
	Holder netip.Addr // the task or agent whose budget it is
	Domain string     // for an obligation: the trust domain and policy that set it;
	Policy string     // "" for a task's delegation budget
}

func (e *BudgetError) Error() string {
	src := "delegation budget"
	if e.Policy != "" {
		src = fmt.Sprintf("budget of %s/%s", e.Domain, e.Policy)
	}
	return fmt.Sprintf("%v: %s of %s: %s", ErrBudgetExceeded, src, e.Holder, e.Kind)
}

func (e *BudgetError) Unwrap() error { return ErrBudgetExceeded }

// Direction is which way a flow crosses this node.
type Direction uint8

const (
	// Outbound: the flow's principal is on this node. The sender's node
	// enforces every budget: its tasks' delegations and the obligations of
	// both sides.
	Outbound Direction = iota
	// Inbound: the flow's resource is on this node. The receiver's node
	// enforces the obligations of its own trust domain when the flow
	// crosses domains; inside one domain it trusts the sender's node,
	// which sees all of the principal's flows and this node only some.
	Inbound
)

// AccountingConfig configures an Accounting. Zero values are the defaults.
type AccountingConfig struct {
	// MaxLedgers bounds the budgets tracked (default 65,536): one per task
	// with a delegation budget, one per (agent, policy) with an obligation.
	// When the table is full and nothing idle can go, a flow that needs a
	// new ledger is refused (BudgetError kind "table_full"): a budget
	// forgotten would be a budget granted again.
	MaxLedgers int
	// MaxDestinations bounds the destinations remembered for fan-out
	// budgets, over all ledgers (default 262,144). A new destination beyond
	// it is refused as "table_full".
	MaxDestinations int
	// Engine, if set, lets Sweep drop the obligation ledgers of policies no
	// longer in force.
	Engine *Engine
}

// Accounting enforces budgets: the rate of new flows (golang.org/x/time/rate),
// bytes, and fan-out (distinct destinations), per task from its delegation
// and per agent from the @rate, @bytes and @fan_out obligations of the
// permits that allowed its flows.
//
//   - A task's delegation budget counts the flows of the task and of every
//     sub-agent under it: a sub-agent's use counts against its parent's.
//   - An obligation counts, per policy, the flows that policy allowed for
//     an agent and all of its tasks together, so that an agent cannot
//     escape a limit by starting tasks. (Per-task limits are delegation
//     budgets, which the agent sets on the tasks it starts.)
//   - @bytes and delegation byte budgets count both directions of every
//     flow charged, for the life of the ledger: the task's (Forget when it
//     ends) or, for an obligation, as long as the agent is known and the
//     policy in force.
//
// The filter calls Admit at a flow's first packet and AddBytes as the
// flow's bytes accrue; both are safe for concurrent use. Admit takes one
// mutex (it runs once per new flow); AddBytes takes none.
type Accounting struct {
	cfg AccountingConfig

	mu      sync.Mutex // guards ledgers, dests
	ledgers map[ledgerKey]*ledger
	dests   int // destinations remembered, over all ledgers

	refused  [numBudgetKinds]atomic.Uint64
	admitted atomic.Uint64
	overrun  atomic.Uint64 // AddBytes calls that found a byte budget spent
}

type ledgerKey struct {
	holder netip.Addr
	domain string // "" and "" for a delegation budget
	policy string
}

// ledger is one budget's state. Its limits change only under
// Accounting.mu; bytes and bytesMax are also read by AddBytes without it.
type ledger struct {
	key      ledgerKey
	rate     float64
	limiter  *rate.Limiter // nil: no rate limit
	bytesMax atomic.Uint64 // 0: no byte limit
	bytes    atomic.Uint64
	fanMax   int // 0: no fan-out limit
	dests    map[netip.Addr]struct{}
	last     time.Time
}

const (
	kindRate = iota
	kindBytes
	kindFanOut
	kindTableFull
	numBudgetKinds
)

var budgetKindNames = [numBudgetKinds]string{"rate", "bytes", "fan_out", "table_full"}

// NewAccounting returns an accounting with no budgets tracked.
func NewAccounting(cfg AccountingConfig) *Accounting {
	if cfg.MaxLedgers <= 0 {
		cfg.MaxLedgers = 1 << 16
	}
	if cfg.MaxDestinations <= 0 {
		cfg.MaxDestinations = 1 << 18
	}
	return &Accounting{cfg: cfg, ledgers: make(map[ledgerKey]*ledger)}
}

// Charge is a flow's hold on the budgets it counts against. Admit returns
// it; the filter keeps it with the flow and passes it to AddBytes. A nil
// Charge counts against nothing.
type Charge struct {
	ledgers []*ledger
}

// budgetSpec is one ledger a flow must be admitted by, and its limits.
type budgetSpec struct {
	key    ledgerKey
	rate   float64
	bytes  uint64
	fanOut int
}

// Admit decides whether a flow that d allowed may start under the
// budgets, and charges it: one new flow against each rate, its destination
// against each fan-out. It is called once, at the flow's first packet,
// after Decide allowed it; dir says which end this node is. A nil Charge
// and nil error mean no budget applies. A refusal is a *BudgetError
// wrapping ErrBudgetExceeded, and charges nothing.
func (a *Accounting) Admit(r *Request, d *Decision, dir Direction, now time.Time) (*Charge, error) {
	if !d.Allow {
		return nil, fmt.Errorf("policy: admit: the decision denies the flow (%s)", d.Reason)
	}
	var specBuf [8]budgetSpec
	specs := specBuf[:0]
	if dir == Outbound {
		for i := range r.Principal.Tasks {
			t := &r.Principal.Tasks[i]
			if b := t.Budget; b != (identity.Budget{}) {
				specs = append(specs, budgetSpec{key: ledgerKey{holder: t.Addr}, rate: b.Rate, bytes: b.Bytes, fanOut: b.FanOut})
			}
		}
	}
	for _, l := range d.Limits {
		if dir == Inbound && !l.inbound {
			continue
		}
		specs = append(specs, budgetSpec{key: ledgerKey{holder: r.Principal.Agent.Addr, domain: l.Domain, policy: l.Policy}, rate: l.Rate, bytes: l.Bytes, fanOut: l.FanOut})
	}
	if len(specs) == 0 {
		a.admitted.Add(1)
		return nil, nil
	}
	dst := r.Resource.Addr()

	a.mu.Lock()
	defer a.mu.Unlock()
	c := &Charge{ledgers: make([]*ledger, 0, len(specs))}
	newDests := 0
	for _, s := range specs {
		l, err := a.ledgerFor(s, now)
		if err != nil {
			return nil, a.refuse(kindTableFull, s.key)
		}
		if m := l.bytesMax.Load(); m > 0 && l.bytes.Load() >= m {
			return nil, a.refuse(kindBytes, s.key)
		}
		if l.fanMax > 0 {
			if _, seen := l.dests[dst]; !seen {
				if len(l.dests) >= l.fanMax {
					return nil, a.refuse(kindFanOut, s.key)
				}
				if a.dests+newDests >= a.cfg.MaxDestinations {
					return nil, a.refuse(kindTableFull, s.key)
				}
				newDests++
			}
		}
		c.ledgers = append(c.ledgers, l)
	}
	// Rates last: a reservation is taken back if a later one refuses.
	var held [8]*rate.Reservation
	reservations := held[:0]
	for _, l := range c.ledgers {
		if l.limiter == nil {
			continue
		}
		res := l.limiter.ReserveN(now, 1)
		if !res.OK() || res.DelayFrom(now) > 0 {
			res.CancelAt(now)
			for _, prev := range reservations {
				prev.CancelAt(now)
			}
			return nil, a.refuse(kindRate, l.key)
		}
		reservations = append(reservations, res)
	}
	for _, l := range c.ledgers {
		l.last = now
		if l.fanMax > 0 {
			if _, seen := l.dests[dst]; !seen {
				l.dests[dst] = struct{}{}
				a.dests++
			}
		}
	}
	a.admitted.Add(1)
	return c, nil
}

// ledgerFor returns the ledger of s, made (room permitting) or with its
// limits brought up to date. Called with a.mu held.
func (a *Accounting) ledgerFor(s budgetSpec, now time.Time) (*ledger, error) {
	l, ok := a.ledgers[s.key]
	if !ok {
		if len(a.ledgers) >= a.cfg.MaxLedgers {
			a.sweepLocked(now)
			if len(a.ledgers) >= a.cfg.MaxLedgers {
				return nil, errors.New("full")
			}
		}
		l = &ledger{key: s.key, last: now}
		a.ledgers[s.key] = l
	}
	if s.rate != l.rate {
		l.rate = s.rate
		switch {
		case s.rate <= 0:
			l.limiter = nil
		case l.limiter == nil:
			l.limiter = rate.NewLimiter(rate.Limit(s.rate), burstOf(s.rate))
		default:
			l.limiter.SetLimitAt(now, rate.Limit(s.rate))
			l.limiter.SetBurstAt(now, burstOf(s.rate))
		}
	}
	l.bytesMax.Store(s.bytes)
	fan := min(s.fanOut, MaxFanOut) // a larger budget is tracked, and enforced, as MaxFanOut
	if fan != l.fanMax {
		l.fanMax = fan
		if fan > 0 && l.dests == nil {
			l.dests = make(map[netip.Addr]struct{}, min(fan, 16))
		}
	}
	return l, nil
}

// burstOf is the bucket size for a rate: one second's worth, at least one.
func burstOf(r float64) int { return max(1, int(math.Ceil(r))) }

func (a *Accounting) refuse(kind int, k ledgerKey) error {
	a.refused[kind].Add(1)
	return &BudgetError{Kind: budgetKindNames[kind], Holder: k.holder, Domain: k.domain, Policy: k.policy}
}

// AddBytes charges n bytes (either direction) of a flow against its byte
// budgets. It reports false when one is now spent: the filter then cuts
// the flow, and Admit refuses the holder's new flows. Call it in batches:
// the filter charges a flow each time its unreported bytes reach 64 KiB,
// and at its end, so a budget is overrun by at most 64 KiB per flow. Safe
// for concurrent use; it takes no lock.
func (a *Accounting) AddBytes(c *Charge, n uint64) bool {
	if c == nil || n == 0 {
		return true
	}
	ok := true
	for _, l := range c.ledgers {
		m := l.bytesMax.Load()
		if m == 0 {
			continue
		}
		if l.bytes.Add(n) > m {
			ok = false
		}
	}
	if !ok {
		a.overrun.Add(1)
	}
	return ok
}

// Forget drops every budget of holder, an address whose task ended or
// whose agent left: its ledgers are not needed again.
func (a *Accounting) Forget(holder netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, l := range a.ledgers {
		if k.holder == holder {
			a.drop(k, l)
		}
	}
}

func (a *Accounting) drop(k ledgerKey, l *ledger) {
	a.dests -= len(l.dests)
	delete(a.ledgers, k)
}

// Sweep drops what can go without losing a count: rate-only ledgers idle
// long enough for their bucket to refill, and, with an Engine configured,
// the obligation ledgers of policies no longer in force. The filter's
// sweeper calls it.
func (a *Accounting) Sweep(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sweepLocked(now)
}

func (a *Accounting) sweepLocked(now time.Time) {
	for k, l := range a.ledgers {
		if k.policy != "" && a.cfg.Engine != nil {
			doc := a.cfg.Engine.Document(k.domain)
			if doc == nil {
				a.drop(k, l)
				continue
			}
			if _, ok := doc.c.byID[types.PolicyID(k.policy)]; !ok {
				a.drop(k, l)
				continue
			}
		}
		if l.bytesMax.Load() == 0 && l.fanMax == 0 && l.rate > 0 {
			refill := time.Duration(float64(burstOf(l.rate)) / l.rate * float64(time.Second))
			if now.Sub(l.last) > refill {
				a.drop(k, l)
			}
		}
	}
}

// AccountingStats are an accounting's counters.
type AccountingStats struct {
	Ledgers      int
	Destinations int
	Admitted     uint64            // flows admitted
	Refused      map[string]uint64 // by BudgetError.Kind
	ByteOverruns uint64            // AddBytes calls that found a byte budget spent
}

// Stats returns the accounting's counters.
func (a *Accounting) Stats() AccountingStats {
	a.mu.Lock()
	s := AccountingStats{Ledgers: len(a.ledgers), Destinations: a.dests}
	a.mu.Unlock()
	s.Admitted = a.admitted.Load()
	s.ByteOverruns = a.overrun.Load()
	s.Refused = make(map[string]uint64, numBudgetKinds)
	for i, n := range budgetKindNames {
		s.Refused[n] = a.refused[i].Load()
	}
	return s
}
