package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

// The binary as a user meets it: help and version exit 0, a wrong
// command 2, and the commands that talk to the sidecar find it through
// $AGENT6_SOCKET.
func TestCommandLine(t *testing.T) {
	bin := buildAgent6(t)
	run := func(env []string, args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		switch {
		case err == nil:
			return string(out), 0
		case errors.As(err, &exit):
			return string(out), exit.ExitCode()
		}
		t.Fatal(err)
		return "", -1
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"help"}, 0, "commands:"},
		{[]string{"--help"}, 0, "completion"},
		{[]string{"help", "up"}, 0, "-config"},
		{[]string{"help", "task", "start"}, 0, "-class"},
		{[]string{"help", "task"}, 0, "subcommands:"},
		{[]string{"help", "nope"}, 2, "unknown command"},
		{[]string{"version"}, 0, "agent6 "},
		{[]string{"--version"}, 0, "module github.com/agent6/agent6"},
		{[]string{"up", "-h"}, 0, "-config"},
		{nil, 2, "usage: agent6"},
		{[]string{"nope"}, 2, `unknown command "nope"`},
		{[]string{"completion", "fish"}, 2, "bash or zsh"},
	} {
		out, code := run(nil, tc.args...)
		if code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("agent6 %s: exit %d, want %d with %q:\n%s", strings.Join(tc.args, " "), code, tc.code, tc.want, out)
		}
	}
	sock := filepath.Join(t.TempDir(), "elsewhere.sock")
	for _, args := range [][]string{{"status"}, {"peers"}, {"invite"}, {"whois", "2001:21::1"}, {"discover"}, {"task", "list"}, {"wait", "--timeout", "200ms"}, {"revoke", "--file", "/dev/null"}} {
		out, code := run([]string{"AGENT6_SOCKET=" + sock}, args...)
		if code != 1 || !strings.Contains(out, sock) {
			t.Errorf("AGENT6_SOCKET=%s agent6 %s: exit %d, want 1 naming the socket:\n%s", sock, strings.Join(args, " "), code, out)
		}
	}
}

func TestVersion(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "github.com/agent6/agent6", Version: "v0.3.0"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.time", Value: "2026-11-30T10:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	if got, want := version(bi, true), "agent6 v0.3.0 revision 0123abcd (2026-11-30T10:00:00Z) with local changes, module github.com/agent6/agent6, go1.26.0"; got != want {
		t.Errorf("version = %q\nwant      %q", got, want)
	}
	bi = &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "github.com/agent6/agent6", Version: "(devel)"}}
	if got := version(bi, true); !strings.Contains(got, "(devel) revision unknown") {
		t.Errorf("version without VCS information = %q", got)
	}
	if got := version(nil, false); !strings.Contains(got, "no build information") {
		t.Errorf("version without build information = %q", got)
	}
}
