package policy

import (
	"crypto/x509"
	"net/netip"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
)

// Agents of two trust domains used throughout the tests.
var (
	planner = Agent{Addr: FixtureAddr("planner"), ID: "spiffe://example.org/agent/planner", TrustDomain: "example.org", Groups: []string{"planners"}}
	search  = Agent{Addr: FixtureAddr("search"), ID: "spiffe://example.org/agent/search", TrustDomain: "example.org", Groups: []string{"tools"}, Skills: []string{"web-search"}, Tags: []string{"web"}}
	crm     = Agent{Addr: FixtureAddr("crm"), ID: "spiffe://example.org/agent/crm", TrustDomain: "example.org", Groups: []string{"tools"}, Skills: []string{"crm-lookup"}}
	dlp     = Agent{Addr: FixtureAddr("dlp"), ID: "spiffe://example.org/agent/dlp", TrustDomain: "example.org", Groups: []string{"dlp"}, Roles: []string{"waypoint"}}
	quotes  = Agent{Addr: FixtureAddr("quotes"), ID: "spiffe://partner.example/agent/quotes", TrustDomain: "partner.example", Groups: []string{"public"}}
	nobody  = Agent{Addr: FixtureAddr("nobody")}
)

// taskOf returns a depth-1 task of owner.
func taskOf(owner Agent, name, class, sensitivity string, scope ...string) Task {
	return Task{
		Addr: FixtureAddr(name), Owner: owner.Addr, Class: class, Sensitivity: sensitivity,
		Depth: 1, Pseudonym: "p-" + name, Scope: MustParseScope(scope...),
	}
}

// subTask returns a sub-agent of parent (a task of owner).
func subTask(parent Task, name string, scope ...string) Task {
	return Task{
		Addr: FixtureAddr(name), Owner: parent.Owner, Parents: append([]netip.Addr{parent.Addr}, parent.Parents...),
		Class: parent.Class, Sensitivity: parent.Sensitivity, Depth: parent.Depth + 1, Pseudonym: "p-" + name,
		Scope: MustParseScope(scope...),
	}
}

func connect(from, to Party, proto Proto, port uint16) *Request {
	return &Request{Principal: from, Resource: to, Action: ActionConnect, Proto: proto, Port: port}
}

// testCA returns a new CA of trust domain td.
func testCA(t testing.TB, td string) *identity.CA {
	t.Helper()
	ca, err := identity.NewCA(td, time.Hour, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func bundleOf(t testing.TB, cas ...*identity.CA) *identity.Bundle {
	t.Helper()
	var certs []*x509.Certificate
	for _, ca := range cas {
		certs = append(certs, ca.Certificate())
	}
	b, err := identity.NewBundle(certs...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mustCompile compiles a document of td with the given text and tests.
func mustCompile(t testing.TB, td string, serial uint64, text string, tests *Tests) *Document {
	t.Helper()
	d, err := Compile(&Document{TrustDomain: td, Serial: serial, IssuedAt: time.Unix(1767236645, 0), Name: "test.cedar", Policy: text, Tests: tests})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// mustSign signs a document with ca.
func mustSign(t testing.TB, ca *identity.CA, serial uint64, text string, tests *Tests) identity.SignedRecord {
	t.Helper()
	rec, _, err := Sign(ca, &Document{TrustDomain: ca.TrustDomain(), Serial: serial, IssuedAt: time.Unix(1767236645, 0), Name: "test.cedar", Policy: text, Tests: tests})
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// engineWith returns an engine with the documents installed (unsigned).
func engineWith(t testing.TB, docs ...*Document) *Engine {
	t.Helper()
	e := New(Config{})
	for _, d := range docs {
		if err := e.Install(d); err != nil {
			t.Fatal(err)
		}
	}
	return e
}
