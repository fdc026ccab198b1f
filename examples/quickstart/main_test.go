package main

import (
	"bytes"
	"regexp"
	"testing"
)

func TestQuickstart(t *testing.T) {
	var out bytes.Buffer
	if err := run(&out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	// The tool saw the planner's address and key; the planner saw the tool's.
	m := regexp.MustCompile(`(?m)^planner  (\S+)  key (\S+)\ntool     (\S+)  key (\S+)$`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("unexpected output:\n%s", out.String())
	}
	for _, want := range []string{
		"tool:    request from " + m[1] + "  key " + m[2],
		"planner: reply from " + m[3] + "  key " + m[4] + ": hello " + m[1],
	} {
		if !bytes.Contains(out.Bytes(), []byte(want)) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
