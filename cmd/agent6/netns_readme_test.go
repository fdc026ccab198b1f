package main

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadmeWalkthrough runs the README's sidecar walk-through as it
// stands, with bash -e, so that it works as written. Only the names it
// gives the host are made unique (namespaces, veth interfaces), and
// bin/agent6 is the binary this test built.
func TestReadmeWalkthrough(t *testing.T) {
	requireNetns(t, "ping")
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(readme), "<!-- walkthrough -->\n```sh\n")
	block, _, ok2 := strings.Cut(block, "```\n<!-- /walkthrough -->")
	if !ok || !ok2 {
		t.Fatal("README.md: no walk-through between <!-- walkthrough --> and <!-- /walkthrough -->")
	}
	if !strings.HasPrefix(block, "make build\n") {
		t.Fatal("the walk-through no longer starts with make build")
	}
	bin := buildAgent6(t)
	id := strconv.Itoa(os.Getpid() % 100000)
	names := map[string]string{"a6a": "a6r" + id + "a", "a6b": "a6r" + id + "b", "a6-veth-a": "a6w" + id + "a", "a6-veth-b": "a6w" + id + "b"}
	script := strings.NewReplacer("make build\n", "", "bin/agent6", bin,
		"a6-veth-a", names["a6-veth-a"], "a6-veth-b", names["a6-veth-b"], "a6a", names["a6a"], "a6b", names["a6b"]).Replace(block)
	t.Cleanup(func() {
		for _, ns := range []string{names["a6a"], names["a6b"]} {
			if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
				for _, f := range strings.Fields(string(out)) {
					if pid, err := strconv.Atoi(f); err == nil {
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			exec.Command("ip", "netns", "del", ns).Run()
		}
		exec.Command("ip", "link", "del", names["a6-veth-a"]).Run()
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-eu", "-o", "pipefail", "-c", script)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "AGENT6_SOCKET=") // the walk-through sets it itself
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README walk-through failed: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{"ready: ", "spiffe://example.org/agent/tool", "3 received", "search-tool", "task pseudonym", "revoked spiffe://example.org/agent/tool"} {
		if !strings.Contains(text, want) {
			t.Errorf("the walk-through's output lacks %q", want)
		}
	}
	if t.Failed() || os.Getenv("AGENT6_TEST_LOG") != "" {
		t.Logf("output:\n%s", text)
	}
	for _, ns := range []string{names["a6a"], names["a6b"]} {
		if exec.Command("ip", "netns", "pids", ns).Run() == nil {
			t.Errorf("the teardown left namespace %s", ns)
		}
	}
}
