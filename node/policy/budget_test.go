package policy

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// admitN admits n flows from r's principal to successive destinations
// (or to r's resource when sameDst), a millisecond apart, and returns how
// many were admitted and the first refusal.
func admitN(a *Accounting, r *Request, d *Decision, dir Direction, n int, sameDst bool, now time.Time) (int, *BudgetError) {
	ok := 0
	var first *BudgetError
	for i := range n {
		rr := *r
		if !sameDst {
			rr.Resource = AgentParty(Agent{Addr: FixtureAddr(fmt.Sprint("dst", i)), TrustDomain: "example.org"})
		}
		_, err := a.Admit(&rr, d, dir, now.Add(time.Duration(i)*time.Millisecond))
		if err == nil {
			ok++
		} else if first == nil {
			errors.As(err, &first)
		}
	}
	return ok, first
}

func TestDelegationRate(t *testing.T) {
	a := NewAccounting(AccountingConfig{})
	task := taskOf(planner, "t", "c", "")
	task.Budget = identity.Budget{Rate: 5}
	r := connect(TaskParty(planner, task), AgentParty(search), ProtoTCP, 443)
	n, refusal := admitN(a, r, &Decision{Allow: true}, Outbound, 20, true, t0)
	if n != 5 || refusal == nil || refusal.Kind != "rate" || refusal.Holder != task.Addr || refusal.Policy != "" {
		t.Fatalf("%d admitted in 20 ms at 5/s (burst 5), refusal %+v", n, refusal)
	}
	if !errors.Is(refusal, ErrBudgetExceeded) {
		t.Error("a BudgetError is not ErrBudgetExceeded")
	}
	// A second later the bucket holds five again.
	if n, _ := admitN(a, r, &Decision{Allow: true}, Outbound, 20, true, t0.Add(2*time.Second)); n != 5 {
		t.Errorf("%d admitted after refill, want 5", n)
	}
	// The receiver does not enforce a delegation budget.
	if n, _ := admitN(a, r, &Decision{Allow: true}, Inbound, 20, true, t0); n != 20 {
		t.Errorf("inbound: %d of 20 admitted", n)
	}
	if st := a.Stats(); st.Refused["rate"] != 30 || st.Ledgers != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestSubAgentCountsAgainstParent: a sub-agent's flows spend its parent
// task's budget too.
func TestSubAgentCountsAgainstParent(t *testing.T) {
	a := NewAccounting(AccountingConfig{})
	parent := taskOf(planner, "t1", "c", "")
	parent.Budget = identity.Budget{FanOut: 3}
	sub := subTask(parent, "t2")
	sub.Budget = identity.Budget{FanOut: 10}
	d := &Decision{Allow: true}
	if n, _ := admitN(a, connect(TaskParty(planner, parent), Party{}, ProtoTCP, 1), d, Outbound, 2, false, t0); n != 2 {
		t.Fatalf("parent: %d of 2", n)
	}
	// dst0 and dst1 are spent by the parent; the sub-agent may add one more
	// destination to the parent's three.
	n, refusal := admitN(a, connect(TaskParty(planner, sub, parent), Party{}, ProtoTCP, 1), d, Outbound, 5, false, t0)
	if n != 3 || refusal == nil || refusal.Kind != "fan_out" || refusal.Holder != parent.Addr {
		t.Errorf("sub-agent: %d of 5 admitted (dst0, dst1 again, and one new), refusal %+v", n, refusal)
	}
}

// TestObligationPerAgent: an obligation's budget is per agent and policy,
// shared by the agent's tasks, so that tasks do not multiply it.
func TestObligationPerAgent(t *testing.T) {
	a := NewAccounting(AccountingConfig{})
	d := &Decision{Allow: true, Limits: []Limit{{Domain: "example.org", Policy: "tools", Rate: 2}}}
	t1, t2 := taskOf(planner, "t1", "c", ""), taskOf(planner, "t2", "c", "")
	n1, _ := admitN(a, connect(TaskParty(planner, t1), AgentParty(search), ProtoTCP, 443), d, Outbound, 5, true, t0)
	n2, refusal := admitN(a, connect(TaskParty(planner, t2), AgentParty(search), ProtoTCP, 443), d, Outbound, 5, true, t0)
	if n1+n2 != 2 || refusal.Holder != planner.Addr || refusal.Policy != "tools" || refusal.Domain != "example.org" {
		t.Errorf("two tasks admitted %d+%d under @rate(\"2\"), refusal %+v", n1, n2, refusal)
	}
	// Another agent has its own budget under the same policy.
	if n, _ := admitN(a, connect(AgentParty(crm), AgentParty(search), ProtoTCP, 443), d, Outbound, 5, true, t0); n != 2 {
		t.Errorf("another agent: %d admitted", n)
	}
	// Another policy's budget is another ledger.
	d2 := &Decision{Allow: true, Limits: []Limit{{Domain: "example.org", Policy: "other", Rate: 2}}}
	if n, _ := admitN(a, connect(AgentParty(planner), AgentParty(search), ProtoTCP, 443), d2, Outbound, 5, true, t0); n != 2 {
		t.Errorf("another policy: %d admitted", n)
	}
}

// TestInboundObligations: the receiver enforces its own domain's
// obligations on flows from another domain only.
func TestInboundObligations(t *testing.T) {
	a := NewAccounting(AccountingConfig{})
	cross := &Decision{Allow: true, Limits: []Limit{
		{Domain: "partner.example", Policy: "out", Rate: 100},
		{Domain: "example.org", Policy: "in", Rate: 1, inbound: true},
	}}
	r := connect(AgentParty(quotes), AgentParty(search), ProtoTCP, 443)
	if n, refusal := admitN(a, r, cross, Inbound, 5, true, t0); n != 1 || refusal.Policy != "in" {
		t.Errorf("inbound across domains: %d admitted, refusal %+v", n, refusal)
	}
	inside := &Decision{Allow: true, Limits: []Limit{{Domain: "example.org", Policy: "in", Rate: 1}}}
	if n, _ := admitN(a, connect(AgentParty(crm), AgentParty(search), ProtoTCP, 443), inside, Inbound, 5, true, t0); n != 5 {
		t.Errorf("inbound inside the domain: %d of 5 admitted; the sender's node enforces", n)
	}
}

func TestByteBudget(t *testing.T) {
	a := NewAccounting(AccountingConfig{})
	task := taskOf(planner, "t", "c", "")
	task.Budget = identity.Budget{Bytes: 100 << 10}
	r := connect(TaskParty(planner, task), AgentParty(search), ProtoTCP, 443)
	c, err := a.Admit(r, &Decision{Allow: true}, Outbound, t0)
	if err != nil || c == nil {
		t.Fatal(err)
	}
	if !a.AddBytes(c, 64<<10) {
		t.Error("64 KiB of a 100 KiB budget refused")
	}
	if a.AddBytes(c, 64<<10) {
		t.Error("128 KiB of a 100 KiB budget accepted")
	}
	_, err = a.Admit(r, &Decision{Allow: true}, Outbound, t0)
	var be *BudgetError
	if !errors.As(err, &be) || be.Kind != "bytes" {
		t.Errorf("a new flow after the budget is spent: %v", err)
	}
	if st := a.Stats(); st.ByteOverruns != 1 || st.Refused["bytes"] != 1 {
		t.Errorf("stats %+v", st)
	}
	if !a.AddBytes(nil, 1<<40) {
		t.Error("a nil charge refused bytes")
	}
	// The task ends: its budget goes with it.
	a.Forget(task.Addr)
	if st := a.Stats(); st.Ledgers != 0 {
		t.Errorf("%d ledgers after Forget", st.Ledgers)
	}
}

// TestAdmitAllOrNothing: a flow refused by one budget spends none of the
// others.
func TestAdmitAllOrNothing(t *testing.T) {
	a := NewAccounting(AccountingConfig{})
	task := taskOf(planner, "t", "c", "")
	task.Budget = identity.Budget{Rate: 1, FanOut: 100}
	d := &Decision{Allow: true, Limits: []Limit{{Domain: "example.org", Policy: "p", FanOut: 1}}}
	r := connect(TaskParty(planner, task), AgentParty(search), ProtoTCP, 443)
	if _, err := a.Admit(r, d, Outbound, t0); err != nil {
		t.Fatal(err)
	}
	r2 := connect(TaskParty(planner, task), AgentParty(crm), ProtoTCP, 443)
	if _, err := a.Admit(r2, d, Outbound, t0.Add(2*time.Second)); err == nil {
		t.Fatal("a second destination under @fan_out(\"1\") was admitted")
	}
	// The refusal took neither the rate token nor a fan-out slot of the
	// task: a flow to search (a known destination) still passes.
	if _, err := a.Admit(r, d, Outbound, t0.Add(2*time.Second)); err != nil {
		t.Errorf("the refused flow spent a budget: %v", err)
	}
}

func TestLedgerTableBounded(t *testing.T) {
	a := NewAccounting(AccountingConfig{MaxLedgers: 4, MaxDestinations: 10})
	d := &Decision{Allow: true}
	var refused *BudgetError
	for i := range 6 {
		task := taskOf(planner, fmt.Sprint("t", i), "c", "")
		task.Budget = identity.Budget{Bytes: 1000}
		_, err := a.Admit(connect(TaskParty(planner, task), AgentParty(search), ProtoTCP, 1), d, Outbound, t0)
		if i < 4 && err != nil {
			t.Fatalf("task %d: %v", i, err)
		}
		if i >= 4 {
			if !errors.As(err, &refused) || refused.Kind != "table_full" {
				t.Fatalf("task %d: %v, want table_full", i, err)
			}
		}
	}
	// Rate-only ledgers make way once their bucket has refilled.
	b := NewAccounting(AccountingConfig{MaxLedgers: 4})
	for i := range 8 {
		task := taskOf(planner, fmt.Sprint("t", i), "c", "")
		task.Budget = identity.Budget{Rate: 10}
		if _, err := b.Admit(connect(TaskParty(planner, task), AgentParty(search), ProtoTCP, 1), d, Outbound, t0.Add(time.Duration(i)*2*time.Second)); err != nil {
			t.Fatalf("rate-only task %d: %v", i, err)
		}
	}
	// Destinations are bounded across ledgers.
	c := NewAccounting(AccountingConfig{MaxDestinations: 3})
	task := taskOf(planner, "t", "c", "")
	task.Budget = identity.Budget{FanOut: 100}
	if n, refusal := admitN(c, connect(TaskParty(planner, task), Party{}, ProtoTCP, 1), d, Outbound, 5, false, t0); n != 3 || refusal.Kind != "table_full" {
		t.Errorf("%d destinations admitted with room for 3, refusal %+v", n, refusal)
	}
	if st := c.Stats(); st.Destinations != 3 {
		t.Errorf("%d destinations tracked", st.Destinations)
	}
}

// TestSweepDropsRetiredPolicies: once a policy leaves the document in
// force, its budgets go.
func TestAdmitNeedsAllow(t *testing.T) {
	if _, err := NewAccounting(AccountingConfig{}).Admit(connect(AgentParty(planner), AgentParty(quotes), ProtoTCP, 1), &Decision{}, Outbound, t0); err == nil || errors.Is(err, ErrBudgetExceeded) {
		t.Errorf("a denied flow: %v", err)
	}
}

func TestSweepDropsRetiredPolicies(t *testing.T) {
	e := engineWith(t, mustCompile(t, "example.org", 1, `@id("a") @fan_out("5") permit (principal, action, resource);`, nil))
	a := NewAccounting(AccountingConfig{Engine: e})
	d := e.Decide(connect(AgentParty(planner), AgentParty(search), ProtoTCP, 1))
	if _, err := a.Admit(connect(AgentParty(planner), AgentParty(search), ProtoTCP, 1), &d, Outbound, t0); err != nil {
		t.Fatal(err)
	}
	a.Sweep(t0.Add(time.Hour))
	if a.Stats().Ledgers != 1 {
		t.Fatal("a live fan-out ledger was swept")
	}
	if err := e.Install(mustCompile(t, "example.org", 2, `@id("b") permit (principal, action, resource);`, nil)); err != nil {
		t.Fatal(err)
	}
	a.Sweep(t0.Add(time.Hour))
	if st := a.Stats(); st.Ledgers != 0 || st.Destinations != 0 {
		t.Errorf("after the policy left: %+v", st)
	}
}

// TestDecisionToAccounting runs the whole path a filter will: decide,
// admit with the decision's obligations.
func TestDecisionToAccounting(t *testing.T) {
	e := engineWith(t, mustCompile(t, "example.org", 1, `@id("calls") @rate("3") permit (principal in Group::"planners", action, resource in Group::"tools");`, nil))
	a := NewAccounting(AccountingConfig{})
	r := connect(AgentParty(planner), AgentParty(search), ProtoTCP, 443)
	admitted := 0
	for i := range 10 {
		d := e.Decide(r)
		if !d.Allow {
			t.Fatal(d.Summary())
		}
		if _, err := a.Admit(r, &d, Outbound, t0.Add(time.Duration(i)*time.Millisecond)); err == nil {
			admitted++
		}
	}
	if admitted != 3 {
		t.Errorf("%d of 10 flows admitted under @rate(\"3\")", admitted)
	}
}
