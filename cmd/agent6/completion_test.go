package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// script writes the completion script for shell into a temporary file.
func script(t *testing.T, shell string) string {
	t.Helper()
	var b bytes.Buffer
	if err := runCompletion([]string{shell}, &b); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "agent6."+shell)
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Every command but help, completion and version has a flag set that
// -h reaches, so completion knows its flags.
func TestEveryCommandHasFlags(t *testing.T) {
	for _, name := range names(commands) {
		cmd := commands[name]
		switch {
		case name == "help" || name == "completion" || name == "version":
		case cmd.sub != nil:
			for _, s := range names(cmd.sub) {
				if flagsOf(name, s) == nil {
					t.Errorf("agent6 %s %s: no flag set", name, s)
				}
			}
		case flagsOf(name) == nil:
			t.Errorf("agent6 %s: no flag set", name)
		}
	}
}

// bashComplete runs the bash completion function on words (the last
// being completed) in dir and returns the candidates.
func bashComplete(t *testing.T, path, dir string, words ...string) []string {
	t.Helper()
	quoted := make([]string, len(words))
	for i, w := range words {
		quoted[i] = "'" + w + "'"
	}
	prog := "source " + path + "; COMP_WORDS=(" + strings.Join(quoted, " ") + "); COMP_CWORD=" +
		strconv.Itoa(len(words)-1) + `; _agent6; printf '%s\n' "${COMPREPLY[@]}"`
	cmd := exec.Command("bash", "--norc", "--noprofile", "-c", prog)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	got := strings.Fields(string(out))
	slices.Sort(got)
	return got
}

func TestCompletionBash(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not installed")
	}
	path := script(t, "bash")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a6.yaml"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	check := func(want []string, words ...string) {
		t.Helper()
		slices.Sort(want)
		if got := bashComplete(t, path, dir, words...); !slices.Equal(got, want) {
			t.Errorf("agent6 %s<TAB>: %q, want %q", strings.Join(words[1:], " "), got, want)
		}
	}
	check(names(commands), "agent6", "")
	check([]string{"end", "list", "start"}, "agent6", "task", "")
	check([]string{"wait", "whois"}, "agent6", "w")
	check([]string{"a6.yaml"}, "agent6", "up", "--config", "")
	check(nil, "agent6", "task", "start", "--class", "")
	for _, c := range allFlags() {
		var want []string
		for _, f := range c.flags {
			want = append(want, "--"+f.Name)
		}
		check(want, append(append([]string{"agent6"}, strings.Fields(c.path)...), "--")...)
	}
}

// TestCompletionZsh checks the zsh script's syntax, then runs its
// function with zsh's completion helpers replaced by ones that print
// what they are given.
func TestCompletionZsh(t *testing.T) {
	if _, err := exec.LookPath("zsh"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("zsh not installed (.ci/run installs it)")
		}
		t.Skip("zsh not installed")
	}
	path := script(t, "zsh")
	if out, err := exec.Command("zsh", "-n", path).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n: %v\n%s", err, out)
	}
	run := func(current int, words ...string) string {
		t.Helper()
		prog := `compdef() { }
_describe() { local -a items; items=("${(@P)${@[-1]}}"); print -r -- "describe ${items[*]}" }
_arguments() { print -rl -- "$@" }
compadd() { print -r -- "compadd $*" }
_files() { print -r -- files }
source ` + path + `
words=(` + strings.Join(words, " ") + `); CURRENT=` + strconv.Itoa(current) + `
_agent6`
		out, err := exec.Command("zsh", "-f", "-c", prog).CombinedOutput()
		if err != nil {
			t.Fatalf("zsh: %v\n%s", err, out)
		}
		return string(out)
	}
	out := run(2, "agent6", "''")
	for _, name := range names(commands) {
		if !strings.Contains(out, " "+name+":"+commands[name].summary) {
			t.Errorf("zsh: command %s not offered: %s", name, out)
		}
	}
	if out := run(3, "agent6", "task", "''"); !strings.Contains(out, "start:") || !strings.Contains(out, "end:") {
		t.Errorf("zsh: task subcommands: %s", out)
	}
	for _, c := range allFlags() {
		words := append(append([]string{"agent6"}, strings.Fields(c.path)...), "--")
		out := run(len(words), words...)
		for _, f := range c.flags {
			if !strings.Contains(out, "\n--"+f.Name+"[") && !strings.Contains(out, "\n--"+f.Name+"=[") && !strings.HasPrefix(out, "--"+f.Name) {
				t.Errorf("zsh: agent6 %s: flag --%s missing from\n%s", c.path, f.Name, out)
			}
		}
	}
}
