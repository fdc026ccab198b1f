// Package policyexample is a policy for a realistic agent deployment,
// acme.example (acme.cedar, with its tests in acme.tests.yaml), federated
// with partner.example (partner.cedar). This test signs both with fresh
// CAs, applies them to an engine as a node would, and decides the flows the
// deployment cares about.
package policyexample

import (
	"os"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node/policy"
)

func sign(t *testing.T, td, cedarFile, testsFile string) (*identity.CA, identity.SignedRecord) {
	t.Helper()
	ca, err := identity.NewCA(td, time.Hour, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile(cedarFile)
	if err != nil {
		t.Fatal(err)
	}
	tests, err := policy.LoadTests(testsFile)
	if err != nil {
		t.Fatal(err)
	}
	rec, report, err := policy.Sign(ca, &policy.Document{TrustDomain: td, Serial: 1, IssuedAt: time.Now(), Name: cedarFile, Policy: string(text), Tests: tests})
	if err != nil {
		t.Fatalf("%s: %v", cedarFile, err)
	}
	if len(report.Results) == 0 || len(report.Failed()) != 0 {
		t.Fatalf("%s: %d tests, %d failed", cedarFile, len(report.Results), len(report.Failed()))
	}
	return ca, rec
}

func TestDeployment(t *testing.T) {
	acmeCA, acmeRec := sign(t, "acme.example", "acme.cedar", "acme.tests.yaml")
	partnerCA, partnerRec := sign(t, "partner.example", "partner.cedar", "partner.tests.yaml")
	bundle, err := identity.NewBundle(acmeCA.Certificate(), partnerCA.Certificate())
	if err != nil {
		t.Fatal(err)
	}
	engine := policy.New(policy.Config{Bundle: bundle})
	acme, err := engine.Apply(acmeRec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := engine.Apply(partnerRec); err != nil {
		t.Fatal(err)
	}

	// The agents, as membership would describe them.
	parties, err := acme.Tests.Parties(acme.TrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	planner, search, quotes, orders := parties["planner"], parties["search"], parties["quotes"], parties["orders"]
	support, coding := parties["support"], parties["coding"]
	connect := func(from, to policy.Party, port uint16) *policy.Request {
		return &policy.Request{Principal: from, Resource: to, Action: policy.ActionConnect, Proto: policy.ProtoTCP, Port: port}
	}

	// Across domains, both documents decide: a planner fetches quotes
	// through the DLP waypoint, logged in detail.
	d := engine.Decide(connect(planner, quotes, 443))
	if !d.Allow || d.Out.Policies[0] != "planners-to-partner" || d.In.Policies[0] != "acme-planners-get-quotes" {
		t.Fatalf("planner → quotes: %s", d.Summary())
	}
	if via := (&policy.Obligations{Via: d.Obligations.Via}).String(); via != `@via("group:dlp")` || d.Obligations.Log != policy.LogDetail {
		t.Errorf("obligations %s", d.Obligations.String())
	}
	// The partner delivers orders; acme's order service accepts them.
	if d := engine.Decide(connect(quotes, orders, 8443)); !d.Allow {
		t.Errorf("quotes → orders: %s", d.Summary())
	}
	// A PII task cannot leave for the partner, whatever the partner allows.
	if d := engine.Decide(connect(support, quotes, 443)); d.Allow || d.Rule() != "acme.example/pii-stays-in-crm" {
		t.Errorf("support task → quotes: %s", d.Summary())
	}
	// The code runner serves coding tasks only.
	if d := engine.Decide(connect(coding, parties["code-runner"], 443)); !d.Allow {
		t.Errorf("coding task → code runner: %s", d.Summary())
	}
	if d := engine.Decide(connect(planner, parties["code-runner"], 443)); d.Allow {
		t.Errorf("planner → code runner: %s", d.Summary())
	}

	// The fan-out obligation holds per planner: two of the partner's quote
	// services, not three, though both documents allow each.
	acct := policy.NewAccounting(policy.AccountingConfig{Engine: engine})
	now := time.Now()
	for i, name := range []string{"quotes-eu", "quotes-us", "quotes-asia"} {
		agent := quotes.Agent
		agent.Addr = policy.FixtureAddr(name)
		agent.ID = "spiffe://partner.example/agent/" + name
		r := connect(planner, policy.AgentParty(agent), 443)
		d := engine.Decide(r)
		if !d.Allow {
			t.Fatalf("planner → %s: %s", name, d.Summary())
		}
		_, err := acct.Admit(r, &d, policy.Outbound, now)
		if (err == nil) != (i < 2) {
			t.Errorf("partner agent %d (%s): admit %v", i+1, name, err)
		}
	}
	// A tool flow of a planner's task counts against the planner's @rate("50").
	admitted := 0
	for range 80 {
		r := connect(coding, search, 443)
		d := engine.Decide(r)
		if _, err := acct.Admit(r, &d, policy.Outbound, now); err == nil {
			admitted++
		}
	}
	if admitted != 50 {
		t.Errorf("%d of 80 tool flows at once admitted under @rate(\"50\")", admitted)
	}
}
