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
	s := out.String()
	task := regexp.MustCompile(`planner: started task (\S+) \(pseudonym (\S+)\)`).FindStringSubmatch(s)
	tool := regexp.MustCompile(`(?m)^tool +(\S+)`).FindStringSubmatch(s)
	if task == nil || tool == nil {
		t.Fatalf("unexpected output:\n%s", s)
	}
	// The tool saw the task's address, the planner's organisation identity
	// and the task's pseudonym (never its name).
	for _, want := range []string{
		`discovered "search-tool" at ` + tool[1],
		"allow=true",
		"tool:    request from " + task[1],
		"agent spiffe://example.org/agent/planner (trust domain example.org",
		"task class=tool-call sensitivity=low pseudonym=" + task[2],
		`reply from ` + tool[1] + `: results for "lisbon"`,
	} {
		if !bytes.Contains(out.Bytes(), []byte(want)) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if bytes.Contains(out.Bytes(), []byte("trip-to-lisbon")) {
		t.Error("the task's name left the planner")
	}
}
