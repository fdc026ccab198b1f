package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	cedar "github.com/cedar-policy/cedar-go"
)

// universe is a small world of agents and tasks for random policies and
// requests, small enough that random scopes often match.
type universe struct {
	agents []Agent
	tasks  []Party // task parties, chains included
}

func newUniverse(rng *rand.Rand) *universe {
	u := &universe{}
	pick := func(prefix string, n int) []string {
		var out []string
		for i := range n {
			if rng.IntN(2) == 0 {
				out = append(out, fmt.Sprintf("%s%d", prefix, i))
			}
		}
		return out
	}
	for i := range 5 {
		td := "a.example"
		if i >= 3 {
			td = "b.example"
		}
		name := fmt.Sprintf("agent%d", i)
		u.agents = append(u.agents, Agent{
			Addr: FixtureAddr(name), ID: "spiffe://" + td + "/agent/" + name, TrustDomain: td,
			Groups: pick("g", 3), Roles: pick("r", 2), Skills: pick("s", 2), Tags: pick("t", 2),
		})
	}
	for i := range 6 {
		owner := u.agents[rng.IntN(len(u.agents))]
		name := fmt.Sprintf("task%d", i)
		t := Task{Addr: FixtureAddr(name), Owner: owner.Addr, Class: []string{"a", "b"}[rng.IntN(2)], Sensitivity: []string{"low", "pii"}[rng.IntN(2)], Depth: 1, Pseudonym: name}
		p := TaskParty(owner, t)
		// Some tasks are sub-agents of an earlier task of the same owner.
		for _, prev := range u.tasks {
			if prev.Agent.Addr == owner.Addr && rng.IntN(2) == 0 {
				pt := prev.Tasks[0]
				t.Depth, t.Parents = pt.Depth+1, append([]netip.Addr{pt.Addr}, pt.Parents...)
				p = TaskParty(owner, t, prev.Tasks...)
				break
			}
		}
		u.tasks = append(u.tasks, p)
	}
	return u
}

func (u *universe) party(rng *rand.Rand) Party {
	if rng.IntN(2) == 0 {
		return AgentParty(u.agents[rng.IntN(len(u.agents))])
	}
	return u.tasks[rng.IntN(len(u.tasks))]
}

func (u *universe) entityRef(rng *rand.Rand) string {
	switch rng.IntN(6) {
	case 0:
		return fmt.Sprintf(`Group::"g%d"`, rng.IntN(3))
	case 1:
		return fmt.Sprintf(`Role::"r%d"`, rng.IntN(2))
	case 2:
		return fmt.Sprintf(`TrustDomain::"%s"`, []string{"a.example", "b.example"}[rng.IntN(2)])
	case 3:
		return fmt.Sprintf(`Agent::"%s"`, u.agents[rng.IntN(len(u.agents))].Addr)
	default:
		return fmt.Sprintf(`Task::"%s"`, u.tasks[rng.IntN(len(u.tasks))].Tasks[0].Addr)
	}
}

func (u *universe) scope(rng *rand.Rand, v string) string {
	switch rng.IntN(7) {
	case 0, 1:
		return v
	case 2:
		return v + " in " + u.entityRef(rng)
	case 3:
		if rng.IntN(2) == 0 {
			return fmt.Sprintf(`%s == Agent::"%s"`, v, u.agents[rng.IntN(len(u.agents))].Addr)
		}
		return fmt.Sprintf(`%s == Task::"%s"`, v, u.tasks[rng.IntN(len(u.tasks))].Tasks[0].Addr)
	case 4:
		return v + " is " + []string{"Agent", "Task"}[rng.IntN(2)]
	case 5:
		return v + " is " + []string{"Agent", "Task"}[rng.IntN(2)] + " in " + u.entityRef(rng)
	}
	return v + " in " + u.entityRef(rng)
}

var randomActions = []string{"action", `action == Action::"connect"`, `action == Action::"discover"`, `action in [Action::"connect", Action::"audit"]`, `action in Action::"audit"`}

var randomConditions = []string{
	"", "when { true }", "unless { true }",
	`when { resource is Agent && resource.skills.contains("s0") }`,
	`when { principal is Task && principal.sensitivity == "pii" }`,
	`when { principal in Group::"g1" || resource in Role::"r0" }`,
	`unless { principal is Task && principal.depth >= 2 }`,
	`when { principal == resource }`,
	`when { context has port && context.port < 1000 }`,
	`when { resource is Task && resource.class == "a" }`,
}

// document returns n random policies, each one the schema accepts (it
// refuses scopes that cannot match, such as an Agent in a Task).
func (u *universe) document(rng *rand.Rand, td string, n int) string {
	var b strings.Builder
	for i := 0; i < n; {
		eff := "permit"
		if rng.IntN(5) == 0 {
			eff = "forbid"
		}
		p := fmt.Sprintf("@id(\"p%d\") %s (%s, %s, %s) %s;\n", i, eff, u.scope(rng, "principal"),
			randomActions[rng.IntN(len(randomActions))], u.scope(rng, "resource"), randomConditions[rng.IntN(len(randomConditions))])
		if _, err := compile(p, ""); err != nil {
			continue
		}
		b.WriteString(p)
		i++
	}
	return b.String()
}

func (u *universe) request(rng *rand.Rand) *Request {
	r := &Request{Principal: u.party(rng), Resource: u.party(rng), Action: Action(rng.IntN(int(numActions)))}
	if r.Action == ActionConnect {
		r.Proto = []Proto{ProtoTCP, ProtoUDP, ProtoICMP}[rng.IntN(3)]
		r.Port = uint16(rng.IntN(2000))
	}
	return r
}

// TestSliceEqualsFull is the property the index must keep: over random
// policies and random requests, evaluating only the candidates the index
// picks gives the same decision, and the same deciding policies, as
// evaluating the whole set.
func TestSliceEqualsFull(t *testing.T) {
	rounds := 300
	if testing.Short() {
		rounds = 30
	}
	matched, sliced := 0, 0
	for seed := range uint64(rounds) {
		rng := rand.New(rand.NewPCG(seed, 0x5eed))
		u := newUniverse(rng)
		text := u.document(rng, "a.example", 1+rng.IntN(40))
		d, err := Compile(&Document{TrustDomain: "a.example", Serial: 1, Policy: text})
		if err != nil {
			t.Fatalf("seed %d: %v\n%s", seed, err, text)
		}
		for range 50 {
			r := u.request(rng)
			ev := evaluator{r: r}
			ev.build("a.example")
			cand := d.c.idx.candidates(&ev.creq, r.Action, &ev.ents, ev.scratch[:])
			sd, sdiag := cedar.Authorize(policySubset{ps: d.c.policies, set: cand}, &ev.ents, ev.creq)
			fd, fdiag := cedar.Authorize(policySubset{ps: d.c.policies}, &ev.ents, ev.creq)
			ids := func(diag cedar.Diagnostic) []string {
				var out []string
				for _, x := range diag.Reasons {
					out = append(out, string(x.PolicyID))
				}
				return out
			}
			if sd != fd || !slices.Equal(ids(sdiag), ids(fdiag)) {
				t.Fatalf("seed %d: %s %s → %s: sliced %v %v, full %v %v\n%s", seed, r.Principal.String(), r.Action, r.Resource.String(),
					sd, ids(sdiag), fd, ids(fdiag), text)
			}
			if len(fdiag.Reasons) > 0 {
				matched++
			}
			sliced += len(d.c.policies) - cand.count()
		}
	}
	// The property means little if nothing ever matched or nothing was
	// ever sliced away.
	if matched < rounds*5 || sliced < rounds*50 {
		t.Errorf("weak run: %d requests matched a policy, %d policy evaluations sliced away", matched, sliced)
	}
	t.Logf("%d requests matched a policy; the index spared %d evaluations", matched, sliced)
}
