package main

import (
	goversion "go/version"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// go.mod's go line asks no more than the dependencies do: a program on
// the oldest Go they allow can require this module without go mod tidy
// raising its own go line (and its toolchain). If this module's code ever
// needs a later Go than its dependencies, raise the line and say so here.
func TestGoLine(t *testing.T) {
	data, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	var ours string
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "go "); ok {
			ours = "go" + strings.TrimSpace(v)
		}
	}
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Path}} {{.GoVersion}}", "all")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -m all: %v", err)
	}
	need, by := "go1.0", ""
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 || f[0] == "github.com/agent6/agent6" {
			continue
		}
		if v := "go" + f[1]; goversion.Compare(v, need) > 0 {
			need, by = v, f[0]
		}
	}
	if goversion.Compare(ours, need) != 0 {
		t.Fatalf("go.mod says %s; the dependencies need %s (%s): use that", ours, need, by)
	}
}
