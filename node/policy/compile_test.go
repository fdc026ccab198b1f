package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestSplitPolicies(t *testing.T) {
	src := "// a comment; with a semicolon\n" +
		"permit (principal, action, resource) when { \"a;b\" == \"a;b\" };\n" +
		"  forbid (principal, action, resource) // trailing; comment\n" +
		"  when { \"\\\";\" == \"x\" };   // done;\n" +
		"// only a comment at the end;\n\n"
	chunks := splitPolicies(src)
	if len(chunks) != 2 {
		t.Fatalf("%d chunks, want 2: %+v", len(chunks), chunks)
	}
	if !strings.HasSuffix(chunks[0].text, "};") || chunks[0].line != 1 || chunks[0].column != 1 {
		t.Errorf("chunk 0: %+v", chunks[0])
	}
	if !strings.HasPrefix(chunks[1].text, "\n  forbid") || chunks[1].line != 2 {
		t.Errorf("chunk 1: %+v", chunks[1])
	}
	if got := splitPolicies("permit (principal, action, resource);\npermit (x"); len(got) != 2 {
		t.Errorf("a trailing unterminated policy is dropped: %+v", got)
	}
}

// TestSyntaxErrorPosition: a syntax error names the document, the policy
// (its @id, or policyN) and the line:column in the whole text.
func TestSyntaxErrorPosition(t *testing.T) {
	cases := []struct {
		src        string
		policy     string
		line, col  int
		msgContain string
	}{
		{"permit (principal, action, resource);\n\n@id(\"broken\")\npermit (principal, action, resource) when { 1 + };\n", "broken", 4, 50, "invalid primary"},
		{"permit (principal, action, resource);\npermit (principal, action, resource) when { true } ;permit (principal, actoin, resource);", "policy2", 2, 72, "actoin"},
		{"permit (principal, action, resource);\n\n\npermit (principal,", "policy1", 4, 19, ""},
		{"permit (principal, action, resource) when { \"unterminated };\n", "policy0", 1, 0, ""},
		{"// héllo ünïcode\n@id(\"u\") permit (principal, action, resource) when { \"é\" == 1 ++ };", "u", 2, 66, ""},
	}
	for _, c := range cases {
		_, err := Compile(&Document{TrustDomain: "example.org", Serial: 3, Name: "x.cedar", Policy: c.src})
		var pe *Error
		if !errors.As(err, &pe) || !errors.Is(err, ErrSyntax) {
			t.Errorf("%q: err %v, want ErrSyntax", c.src, err)
			continue
		}
		if pe.Policy != c.policy || pe.Line != c.line || (c.col > 0 && pe.Column != c.col) {
			t.Errorf("%q: %q at %d:%d, want %q at %d:%d (%v)", c.src, pe.Policy, pe.Line, pe.Column, c.policy, c.line, c.col, err)
		}
		if !strings.Contains(err.Error(), "example.org serial 3 (x.cedar)") || !strings.Contains(err.Error(), c.msgContain) {
			t.Errorf("message %q does not name the document or the problem", err)
		}
	}
}

func TestSchemaErrors(t *testing.T) {
	cases := map[string]string{
		`permit (principal == Agnt::"x", action, resource);`:                                              "Agnt",
		`permit (principal, action == Action::"connect", resource) when { principal.sensitivty == "x" };`: "sensitivty",
		`permit (principal, action, resource) when { context.port == 443 };`:                              "port",
		`permit (principal, action == Action::"read", resource);`:                                         "read",
		`permit (principal is Agent, action, resource) when { principal.depth > 1 };`:                     "depth",
		`permit (principal == Agent::"2001:21:0:0:0:0:0:1", action, resource);`:                           "overlay address",
		`permit (principal, action, resource) when { resource in Task::"planner" };`:                      "overlay address",
		`permit (principal, action == Action::"connect", resource) when { context.port == "443" };`:       "",
	}
	for src, want := range cases {
		_, err := Compile(&Document{TrustDomain: "example.org", Serial: 1, Policy: "\n" + src})
		var pe *Error
		if !errors.As(err, &pe) || !errors.Is(err, ErrSchema) {
			t.Errorf("%s: err %v, want ErrSchema", src, err)
			continue
		}
		if pe.Policy != "policy0" || pe.Line != 2 || pe.Column != 1 || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", src, err)
		}
	}
}

func TestPolicyIDs(t *testing.T) {
	d := mustCompile(t, "example.org", 1, `
@id("first") permit (principal, action, resource);
permit (principal, action, resource);
@id("third") @description("the third") forbid (principal, action, resource) when { false };
`, nil)
	var ids []string
	for _, p := range d.Policies() {
		ids = append(ids, p.ID+"@"+p.Position.String()+":"+p.Effect)
	}
	if got := strings.Join(ids, " "); got != "first@2:1:permit policy1@3:1:permit third@4:1:forbid" {
		t.Errorf("policies %s", got)
	}
	for _, src := range []string{
		`@id("a") permit (principal, action, resource); @id("a") permit (principal, action, resource);`,
		`@id("") permit (principal, action, resource);`,
		`@id("policy1") permit (principal, action, resource); permit (principal, action, resource);`,
	} {
		if _, err := Compile(&Document{TrustDomain: "example.org", Serial: 1, Policy: src}); !errors.Is(err, ErrAnnotation) {
			t.Errorf("%s: err %v, want ErrAnnotation", src, err)
		}
	}
}

func TestCompileBounds(t *testing.T) {
	src := strings.Repeat("permit (principal, action, resource);\n", MaxPolicies+1)
	if _, err := Compile(&Document{TrustDomain: "example.org", Serial: 1, Policy: src}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("%d policies: err %v, want ErrTooLarge", MaxPolicies+1, err)
	}
	for _, d := range []*Document{
		{TrustDomain: "spiffe://example.org", Serial: 1},
		{TrustDomain: "Example.org", Serial: 1},
		{TrustDomain: "example.org", Serial: 0},
		{TrustDomain: "example.org", Serial: 1, Policy: "\xff"},
	} {
		if _, err := Compile(d); !errors.Is(err, ErrMalformed) {
			t.Errorf("%+v: err %v, want ErrMalformed", d, err)
		}
	}
}
