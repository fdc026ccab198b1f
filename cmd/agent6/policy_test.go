package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node/policy"
)

func runPolicyCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := runPolicy(args, &out)
	return out.String(), err
}

// TestPolicyCommand walks the offline workflow on the example deployment:
// test, sign (serials advance), show, explain across two domains, and the
// refusals.
func TestPolicyCommand(t *testing.T) {
	dir := t.TempDir()
	path := func(name string) string { return filepath.Join(dir, name) }
	ex := func(name string) string { return filepath.Join("..", "..", "examples", "policy", name) }
	runCAOK(t, "init", "--trust-domain", "acme.example", "--out", path("acme-ca"))
	runCAOK(t, "init", "--trust-domain", "partner.example", "--out", path("partner-ca"))
	bundle := append(mustRead(t, path("acme-ca/ca.crt")), mustRead(t, path("partner-ca/ca.crt"))...)
	os.WriteFile(path("bundle.pem"), bundle, 0o644)

	out, err := runPolicyCmd(t, "test", "--trust-domain", "acme.example", ex("acme.cedar"))
	if err != nil || !strings.Contains(out, "PASS planner calls search\n") || !strings.Contains(out, "23 passed, 0 failed") {
		t.Fatalf("test: %v\n%s", err, out)
	}

	// Sign takes the next serial each time; the tests file is found beside
	// the Cedar file.
	for serial, want := range []string{"serial 1", "serial 2"} {
		out, err = runPolicyCmd(t, "sign", "--ca", path("acme-ca"), "--out", path("acme.policy"), ex("acme.cedar"))
		if err != nil || !strings.Contains(out, "signed acme.example "+want+" (acme.cedar): 9 policies") {
			t.Fatalf("sign %d: %v\n%s", serial+1, err, out)
		}
	}
	if _, err := runPolicyCmd(t, "sign", "--ca", path("partner-ca"), "--out", path("partner.policy"), ex("partner.cedar")); err != nil {
		t.Fatal(err)
	}
	if _, err := runPolicyCmd(t, "sign", "--ca", path("acme-ca"), "--out", path("x"), "--serial", "2", ex("acme.cedar")); err == nil || !strings.Contains(err.Error(), "already signed serial 2") {
		t.Errorf("--serial 2 again: %v", err)
	}
	rec, err := policy.LoadFile(path("acme.policy"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := identity.LoadBundle(path("bundle.pem"))
	if d, err := policy.Verify(b, rec); err != nil || d.Serial != 2 {
		t.Fatalf("the signed file: %v", err)
	}

	// A signed document's own tests run from the file.
	if out, err := runPolicyCmd(t, "test", "-q", path("acme.policy")); err != nil || out != "23 passed, 0 failed\n" {
		t.Errorf("test of a signed document: %v %q", err, out)
	}

	out, err = runPolicyCmd(t, "show", "--file", path("acme.policy"), "--bundle", path("bundle.pem"))
	for _, want := range []string{"serial        2", "a CA of acme.example in the bundle (verified)", "9 (7 permit, 2 forbid)", "tests         23, 0 failing",
		`planners-to-partner      permit  49:1  @bytes("50000000") @fan_out("2") @log("detail") @via("group:dlp")`} {
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("show lacks %q: %v\n%s", want, err, out)
		}
	}
	if out, _ := runPolicyCmd(t, "show", "--file", path("acme.policy"), "--cedar"); !strings.HasPrefix(out, "// Agent6 policy of acme.example") {
		t.Errorf("show --cedar: %q", out[:40])
	}
	// Shown against a bundle without acme.example, it is refused.
	os.WriteFile(path("partner-only.pem"), mustRead(t, path("partner-ca/ca.crt")), 0o644)
	if _, err := runPolicyCmd(t, "show", "--file", path("acme.policy"), "--bundle", path("partner-only.pem")); !errors.Is(err, policy.ErrUnknownDomain) {
		t.Errorf("show with a bundle lacking the domain: %v", err)
	}

	out, err = runPolicyCmd(t, "explain", "--file", path("acme.policy"), "--file", path("partner.policy"), "--bundle", path("bundle.pem"),
		"--from", "planner", "--to", "spiffe://partner.example/agent/quotes", "--port", "443")
	if err != nil {
		t.Fatal(err)
	}
	// quotes is named by SPIFFE ID and known from acme's tests, with its skills.
	for _, want := range []string{"allow: allowed by acme.example serial 2: planners-to-partner and partner.example serial 1: acme-planners-get-quotes",
		"outbound, trust domain acme.example", "inbound, trust domain partner.example", `obligations @bytes("50000000") @fan_out("2") @log("detail") @via("group:dlp")`} {
		if !strings.Contains(out, want) {
			t.Errorf("explain lacks %q:\n%s", want, out)
		}
	}
	out, err = runPolicyCmd(t, "explain", "--file", path("acme.policy"), "--from", "support", "--to", "search", "--port", "443")
	if err != nil || !strings.Contains(out, "deny: forbidden by acme.example serial 2: pii-stays-in-crm") || !strings.Contains(out, "signatures not checked") {
		t.Errorf("explain support → search: %v\n%s", err, out)
	}
	if _, err := runPolicyCmd(t, "explain", "--file", path("acme.policy"), "--from", "nobody", "--to", "search", "--port", "443"); err == nil {
		t.Error("explain with an unknown --from")
	}
}

// TestPolicySignRefusesFailingTests: a failing test is printed and nothing
// is written, and the serial does not advance.
func TestPolicySignRefusesFailingTests(t *testing.T) {
	dir := t.TempDir()
	path := func(name string) string { return filepath.Join(dir, name) }
	runCAOK(t, "init", "--trust-domain", "example.org", "--out", path("ca"))
	os.WriteFile(path("p.cedar"), []byte(`@id("tools") permit (principal in Group::"planners", action, resource in Group::"tools");`), 0o644)
	os.WriteFile(path("t.yaml"), []byte(`
agents: {planner: {groups: [planners]}, search: {groups: [tools]}}
tests:
  - {name: planner reaches search, from: planner, to: search, port: 443, expect: allow}
  - {name: search reaches planner, from: search, to: planner, port: 443, expect: allow}
`), 0o644)
	out, err := runPolicyCmd(t, "sign", "--ca", path("ca"), "--tests", path("t.yaml"), "--out", path("p.policy"), path("p.cedar"))
	if !errors.Is(err, policy.ErrTestsFailed) || !strings.Contains(out, "FAIL search reaches planner: expected allow, got deny") || !strings.Contains(out, "1 passed, 1 failed") {
		t.Errorf("sign: %v\n%s", err, out)
	}
	if _, err := os.Stat(path("p.policy")); err == nil {
		t.Error("a document whose tests fail was written")
	}
	if n, _ := policy.LastSerial(path("ca")); n != 0 {
		t.Errorf("serial %d recorded for an unsigned document", n)
	}
	// A syntax error names the file's policy and line:column.
	os.WriteFile(path("bad.cedar"), []byte("permit (principal, action, resource);\n@id(\"oops\")\npermit (principal, action resource);\n"), 0o644)
	_, err = runPolicyCmd(t, "sign", "--ca", path("ca"), "--out", path("bad.policy"), path("bad.cedar"))
	if !errors.Is(err, policy.ErrSyntax) || !strings.Contains(err.Error(), `(bad.cedar): policy "oops" at 3:27`) {
		t.Errorf("syntax error: %v", err)
	}
	for _, args := range [][]string{
		{"sign", "--out", "x", "p.cedar"},
		{"test", path("p.cedar")},
		{"explain", "--from", "a", "--to", "b"},
		{"frobnicate"},
	} {
		if _, err := runPolicyCmd(t, args...); !errors.Is(err, errUsage) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
