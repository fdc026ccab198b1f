package policy

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzDecode feeds arbitrary payloads to the document decoder: it must
// refuse with an *Error, never panic, and what it accepts must encode back
// to a document that decodes the same.
func FuzzDecode(f *testing.F) {
	for _, text := range []string{allowTools, testsPolicy, "", "permit (principal, action, resource);"} {
		d := &Document{TrustDomain: "example.org", Serial: 3, Name: "f.cedar", Policy: text}
		p, err := d.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
	}
	tests, _ := ParseTests([]byte(testsYAML))
	p, _ := (&Document{TrustDomain: "example.org", Serial: 9, Policy: testsPolicy, Tests: tests}).Marshal()
	f.Add(p)
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, payload []byte) {
		d, err := Decode(payload)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not an *Error", err)
			}
			return
		}
		again, err := d.Marshal()
		if err != nil {
			return // valid but over a record's size once recompressed
		}
		d2, err := Decode(again)
		if err != nil || !bytes.Equal(d.body(), d2.body()) {
			t.Fatalf("re-encoded document does not decode the same: %v", err)
		}
		RunTests(d)
	})
}

// FuzzCompile feeds arbitrary Cedar text to the compiler.
func FuzzCompile(f *testing.F) {
	for _, s := range []string{
		allowTools, testsPolicy,
		`@id("x") @rate("10/s") @bytes("1MiB") @fan_out("2") @log("flow") @via("role:waypoint, group:dlp") permit (principal, action, resource);`,
		`forbid (principal is Task in Agent::"2001:21::1", action in [Action::"connect"], resource) when { context.port == 22 };`,
		"permit (principal, action, resource) when { \"a;b\" };  // c;\n",
		"permit (",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		c, err := compile(src, "fuzz")
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || pe.Reason == nil {
				t.Fatalf("error %v is not an *Error", err)
			}
			return
		}
		// What compiles is evaluable.
		doc := &Document{TrustDomain: "example.org", Serial: 1, c: c}
		r := connect(AgentParty(planner), AgentParty(search), ProtoTCP, 443)
		decideOne(doc, r)
	})
}

// FuzzParseSelector: what parses prints back to itself.
func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{"*", "group:tools tcp/443", "skill:x udp/1-65535", "domain:a.example icmp",
		"spiffe://a.example/agent/b", "2001:21:4bc6:f39d:90d:70a2:9351:1c64 tcp"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParseSelector(s)
		if err != nil {
			return
		}
		back, err := ParseSelector(sel.String())
		if err != nil || back != sel {
			t.Fatalf("%q → %+v prints %q → %+v, %v", s, sel, sel.String(), back, err)
		}
	})
}

// FuzzParseAnnotation: one annotation of each kind, any value.
func FuzzParseAnnotation(f *testing.F) {
	for _, kv := range [][2]string{{"rate", "10/m"}, {"bytes", "5GiB"}, {"fan_out", "3"}, {"log", "flow"}, {"via", "group:a, role:b"}, {"id", "x"}} {
		f.Add(kv[0], kv[1])
	}
	f.Fuzz(func(t *testing.T, k, v string) {
		o, err := parseObligations(map[string]string{k: v}, false)
		if err != nil {
			return
		}
		if o.Rate < 0 || o.Rate > MaxRate || o.FanOut < 0 || o.FanOut > MaxFanOut || len(o.Via) > MaxSelectors {
			t.Fatalf("%s=%q gave %+v", k, v, o)
		}
	})
}

// FuzzParseTests feeds arbitrary tests files to the parser and checker.
func FuzzParseTests(f *testing.F) {
	f.Add([]byte(testsYAML))
	f.Add([]byte("agents: {a: {}}\ntasks: {t: {owner: a}, u: {parent: t}}\ntests: [{name: x, from: u, to: a, port: 1, expect: deny}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tests, err := ParseTests(data)
		if err != nil {
			return
		}
		if err := tests.check("example.org"); err != nil {
			return
		}
		d := &Document{TrustDomain: "example.org", Serial: 1, Tests: tests}
		c, err := compile(testsPolicy, "")
		if err != nil {
			t.Fatal(err)
		}
		d.c = c
		RunTests(d)
	})
}
