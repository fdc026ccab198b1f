package policy

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	cedar "github.com/cedar-policy/cedar-go"
)

// benchPolicies returns n policies shaped like a large deployment's: most
// scoped to a team's group and a service's group, some to one agent, a few
// unscoped forbids that every request must evaluate.
func benchPolicies(n int) string {
	var b strings.Builder
	for i := range n {
		switch {
		case i%50 == 0:
			fmt.Fprintf(&b, "@id(\"deny-%d\") forbid (principal, action == Action::\"connect\", resource) when { context.port == %d };\n", i, 20000+i)
		case i%10 == 1:
			fmt.Fprintf(&b, "@id(\"agent-%d\") permit (principal == Agent::\"%s\", action == Action::\"connect\", resource in Group::\"svc%d\");\n", i, FixtureAddr(fmt.Sprint("a", i)), i)
		case i%10 == 2:
			fmt.Fprintf(&b, "@id(\"discover-%d\") permit (principal in Group::\"team%d\", action == Action::\"discover\", resource is Agent) when { resource.skills.contains(\"skill%d\") };\n", i, i, i)
		default:
			fmt.Fprintf(&b, "@id(\"team-%d\") @rate(\"10\") permit (principal in Group::\"team%d\", action == Action::\"connect\", resource in Group::\"svc%d\") when { context.proto == \"tcp\" && [443, 8443].contains(context.port) };\n", i, i, i)
		}
	}
	return b.String()
}

// benchRequest is a task of a planner in team3 calling a tool in svc3 over
// TCP 443: allowed by team-3.
func benchRequest() *Request {
	owner := Agent{Addr: FixtureAddr("bench-planner"), ID: "spiffe://example.org/agent/bench-planner", TrustDomain: "example.org", Groups: []string{"planners", "team3"}, Roles: []string{"auditor"}}
	tool := Agent{Addr: FixtureAddr("bench-tool"), ID: "spiffe://example.org/agent/bench-tool", TrustDomain: "example.org", Groups: []string{"svc3", "tools"}, Skills: []string{"skill3", "web-search"}, Tags: []string{"web"}}
	task := Task{Addr: FixtureAddr("bench-task"), Owner: owner.Addr, Class: "tool-call", Sensitivity: "low", Depth: 1, Pseudonym: "x"}
	return connect(TaskParty(owner, task), AgentParty(tool), ProtoTCP, 443)
}

func benchEngine(b *testing.B, n int) *Engine {
	d, err := Compile(&Document{TrustDomain: "example.org", Serial: 1, Policy: benchPolicies(n)})
	if err != nil {
		b.Fatal(err)
	}
	e := New(Config{})
	if err := e.Install(d); err != nil {
		b.Fatal(err)
	}
	if got := e.Decide(benchRequest()); !got.Allow || got.Rule() != "example.org/team-3" {
		b.Fatalf("bench request: %s", got.Summary())
	}
	return e
}

var policyCounts = []int{10, 100, 1000}

// BenchmarkDecideHit: a new flow whose question was answered before at the
// current generation.
func BenchmarkDecideHit(b *testing.B) {
	for _, n := range policyCounts {
		e := benchEngine(b, n)
		r := benchRequest()
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			cpu := startCPU()
			for b.Loop() {
				if d := e.Decide(r); !d.Allow {
					b.Fatal("denied")
				}
			}
			cpu.report(b)
		})
	}
}

// BenchmarkDecideMiss: every call a question not asked before (another
// destination port, among 64 tools), so each is evaluated over the sliced
// policy set and cached; the parties' entities are cached at the
// generation, as they are for a new flow between known agents.
func BenchmarkDecideMiss(b *testing.B) {
	for _, n := range policyCounts {
		reqs := make([]*Request, 64)
		for i := range reqs {
			reqs[i] = benchRequest()
			reqs[i].Resource.Agent.Addr = FixtureAddr(fmt.Sprint("bench-tool-", i))
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			e := benchEngine(b, n) // per run: -count must not find the last run's decisions
			b.ReportAllocs()
			cpu := startCPU()
			i := 0
			for b.Loop() {
				r := reqs[i%64]
				r.Port = uint16(1 + (i/64)%65535)
				i++
				e.Decide(r)
			}
			cpu.report(b)
			if st := e.Stats(); st.CacheHits > 0 {
				b.Fatalf("%d cache hits in a miss benchmark", st.CacheHits)
			}
		})
	}
}

// BenchmarkDecideNewGeneration: the first decision after a membership
// change (Invalidate): the entities are built again as well.
func BenchmarkDecideNewGeneration(b *testing.B) {
	for _, n := range policyCounts {
		e := benchEngine(b, n)
		r := benchRequest()
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			cpu := startCPU()
			for b.Loop() {
				e.Invalidate()
				e.Decide(r)
			}
			cpu.report(b)
		})
	}
}

// BenchmarkEvaluateUnsliced is what a miss would cost evaluating every
// policy: the reference the index is measured against.
func BenchmarkEvaluateUnsliced(b *testing.B) {
	for _, n := range policyCounts {
		e := benchEngine(b, n)
		d := e.Document("example.org")
		r := benchRequest()
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ev := evaluator{r: r}
				ev.build("example.org")
				if dec, _ := cedar.Authorize(policySubset{ps: d.c.policies}, &ev.ents, ev.creq); dec != cedar.Allow {
					b.Fatal("denied")
				}
			}
		})
	}
}

// BenchmarkAdmit: the accounting's cost at a flow's first packet with a
// delegation budget and an obligation.
func BenchmarkAdmit(b *testing.B) {
	e := benchEngine(b, 100)
	r := benchRequest()
	r.Principal.Tasks[0].Budget.Rate = 1e6
	d := e.Decide(r)
	a := NewAccounting(AccountingConfig{})
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := a.Admit(r, &d, Outbound, t0.Add(time.Duration(i)*time.Second)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCompile: parsing, validating and indexing a document.
func BenchmarkCompile(b *testing.B) {
	for _, n := range policyCounts {
		src := benchPolicies(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				if _, err := compile(src, ""); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// cpuClock measures the process's CPU time over a benchmark loop: on a
// machine shared with other work, CPU time per operation says more than
// wall time (it is reported as cpu-ns/op beside ns/op).
type cpuClock struct{ start time.Duration }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU() cpuClock { return cpuClock{cpuTime()} }

func (c cpuClock) report(b *testing.B) {
	b.ReportMetric(float64(cpuTime()-c.start)/float64(b.N), "cpu-ns/op")
}
