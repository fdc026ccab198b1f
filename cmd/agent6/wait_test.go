package main

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestWait(t *testing.T) {
	sock, self, _ := embedded(t) // a node that has admitted one peer
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := runWait(args, &out)
		return out.String(), err
	}
	if out, err := run("--socket", sock); err != nil || !strings.HasPrefix(out, "ready: "+self.Addr().String()) {
		t.Fatalf("wait: %q %v", out, err)
	}
	if out, err := run("--peers", "1", "--socket", sock); err != nil || !strings.Contains(out, "1 peers admitted, joined=true") {
		t.Fatalf("wait --peers 1: %q %v", out, err)
	}
	if _, err := run("--peers", "3", "--timeout", "300ms", "--socket", sock); err == nil || !strings.Contains(err.Error(), "1 of 3 peers admitted") {
		t.Fatalf("wait --peers 3: %v, want a timeout saying 1 of 3", err)
	}
	absent := filepath.Join(t.TempDir(), "absent.sock")
	if _, err := run("--timeout", "300ms", "--socket", absent); err == nil || !strings.Contains(err.Error(), absent) {
		t.Fatalf("wait on an absent socket: %v", err)
	}
	for _, args := range [][]string{{"--peers", "-1"}, {"--timeout", "0s"}, {"extra"}} {
		if _, err := run(args...); !errors.Is(err, errUsage) {
			t.Errorf("wait %v: %v, want a usage error", args, err)
		}
	}
}
