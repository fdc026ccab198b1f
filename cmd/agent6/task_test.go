package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/agent6/agent6/node/localapi"
)

func TestTaskCommands(t *testing.T) {
	sock, self, _ := embedded(t)
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := runTask(args, &out)
		return out.String(), err
	}

	out, err := run("start", "--class", "tool-call", "--sensitivity", "low", "--ttl", "10m", "--socket", sock)
	f := strings.Fields(out)
	if err != nil || len(f) != 2 {
		t.Fatalf("task start: %q %v", out, err)
	}
	id := f[0]
	task, ok := self.Tasks()[0], len(self.Tasks()) == 1
	if !ok || task.Pseudonym() != id || task.Addr().String() != f[1] {
		t.Fatalf("task start printed %q; node runs %v", out, self.Tasks())
	}

	out, err = run("start", "--class", "retrieval", "--parent", id, "--scope", "a", "--scope", "b", "--json", "--socket", sock)
	var sub localapi.Task
	if err != nil || json.Unmarshal([]byte(out), &sub) != nil || sub.Depth != 2 || sub.Class != "retrieval" ||
		len(sub.Scope) != 2 || len(sub.Parents) != 2 || sub.Parents[1] != task.Addr() {
		t.Fatalf("task start --json: %q %v", out, err)
	}

	out, err = run("list", "--socket", sock)
	uid := strconv.Itoa(os.Getuid()) // who started them
	lines := strings.Split(strings.TrimSpace(out), "\n")
	row := func(i int) string { // the row's fields, the time left (9m59s or 10m0s) as T
		f := strings.Fields(lines[i])
		if len(f) == 9 && f[5] == "in" && (f[6] == "10m0s" || strings.HasPrefix(f[6], "9m5")) {
			f[6] = "T"
		}
		return strings.Join(f, " ")
	}
	if err != nil || len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") ||
		row(1) != id+" "+task.Addr().String()+" tool-call low 1 in T - "+uid ||
		row(2) != sub.ID+" "+sub.Addr.String()+" retrieval - 2 in T "+id+" "+uid {
		t.Fatalf("task list:\n%s%v", out, err)
	}
	out, err = run("list", "--json", "--socket", sock)
	var tasks []localapi.Task
	if err != nil || json.Unmarshal([]byte(out), &tasks) != nil || len(tasks) != 2 {
		t.Fatalf("task list --json: %q %v", out, err)
	}

	if out, err := run("end", sub.ID, "--socket", sock); err != nil || out != "" {
		t.Fatalf("task end: %q %v", out, err)
	}
	if _, err := run("end", "--socket", sock, sub.ID); err == nil || !strings.Contains(err.Error(), localapi.CodeNotFound) {
		t.Fatalf("task end twice: %v", err)
	}
	if _, err := run("start", "--class", "x", "--parent", "nope", "--socket", sock); err == nil || !strings.Contains(err.Error(), localapi.CodeNotFound) {
		t.Fatalf("task start with an unknown parent: %v", err)
	}
	if len(self.Tasks()) != 1 {
		t.Fatalf("node runs %d tasks, want 1", len(self.Tasks()))
	}

	for _, args := range [][]string{
		{}, {"stop"}, {"start"}, {"start", "--class", "x", "extra"}, {"start", "--class", "x", "--ttl", "-1m"},
		{"start", "--class", "x", "--ttl", "soon"}, {"end"}, {"end", "a", "b"}, {"list", "x"},
	} {
		if _, err := run(args...); !errors.Is(err, errUsage) {
			t.Errorf("task %v: %v, want a usage error", args, err)
		}
	}
}
