package localapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/localapi"
)

// serveMember serves the LocalAPI of a lone node with membership (tasks
// need it).
func serveMember(t *testing.T) (*node.Node, *localapi.Server, string) {
	t.Helper()
	ca, err := identity.NewCA("example.org", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	bundle, _ := identity.ParseBundle(ca.CertificatePEM())
	k, _ := identity.GeneratePrivateKey()
	der, err := ca.Issue(identity.IssueRequest{Key: k.Public(), Name: "planner"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	n := &node.Node{Key: k, Credential: der, Bundle: bundle, DisableDNS: true,
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}}
	if err := n.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	sock := filepath.Join(t.TempDir(), "a.sock")
	ln, err := localapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &localapi.Server{Node: n}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return n, srv, sock
}

// do sends method path with body on the LocalAPI socket and returns the
// status and the error body, if any.
func do(t *testing.T, sock, method, path, body string) (int, localapi.ErrorBody) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	req, _ := http.NewRequest(method, "http://agent6"+path, strings.NewReader(body))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var eb localapi.ErrorBody
	if resp.StatusCode >= 400 {
		if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil || eb.Error == "" {
			t.Errorf("%s %s: %d without a JSON error (%v)", method, path, resp.StatusCode, err)
		}
	}
	return resp.StatusCode, eb
}

func TestTasks(t *testing.T) {
	n, _, sock := serveMember(t)
	ctx := context.Background()
	c := &localapi.Client{Socket: sock}

	tasks, err := c.Tasks(ctx)
	if err != nil || tasks == nil || len(tasks) != 0 {
		t.Fatalf("tasks before any = %#v, %v", tasks, err)
	}
	before := time.Now()
	task, err := c.StartTask(ctx, localapi.TaskRequest{ID: "order-42", Class: "tool-call", Sensitivity: "low",
		Scope: []string{"search"}, TTL: 10 * time.Minute, Budget: identity.Budget{FanOut: 3}})
	if err != nil {
		t.Fatal(err)
	}
	if task.ID == "" || strings.Contains(task.ID, "order-42") || !identity.IsOverlay(task.Addr) || task.Addr == n.Addr() ||
		task.Depth != 1 || task.Class != "tool-call" || len(task.Parents) != 1 || task.Parents[0] != n.Addr() {
		t.Fatalf("started %+v", task)
	}
	if e := task.Expires.Sub(before); e < 9*time.Minute || e > 11*time.Minute {
		t.Errorf("expires in %v, want 10m", e)
	}
	nt, ok := n.Task(task.Addr)
	if !ok || nt.Pseudonym() != task.ID {
		t.Fatalf("node holds no task at %s", task.Addr)
	}
	who, err := c.WhoIs(ctx, task.Addr)
	if err != nil || who.Task == nil || who.Task.Class != "tool-call" || who.ID != "spiffe://example.org/agent/planner" {
		t.Fatalf("whois task = %+v, %v", who, err)
	}

	// The same caller ID twice is refused; the first task keeps running.
	var apiErr *localapi.Error
	if _, err := c.StartTask(ctx, localapi.TaskRequest{ID: "order-42"}); !errors.As(err, &apiErr) || apiErr.Status != 422 || apiErr.Code != localapi.CodeRefused {
		t.Fatalf("duplicate id: %v", err)
	}

	// Sub-agents nest up to identity.MaxDelegationDepth, never outliving
	// their parent: a longer TTL is refused, the default cut to the parent.
	if _, err := c.StartTask(ctx, localapi.TaskRequest{Class: "sub", Parent: task.ID, TTL: time.Hour}); !errors.As(err, &apiErr) ||
		apiErr.Status != 422 || apiErr.Code != localapi.CodeRefused || !strings.Contains(apiErr.Message, "parent") {
		t.Fatalf("sub-agent outliving its parent: %v", err)
	}
	parent := task
	for depth := 2; depth <= identity.MaxDelegationDepth; depth++ {
		sub, err := c.StartTask(ctx, localapi.TaskRequest{Class: "sub", Parent: parent.ID})
		if err != nil {
			t.Fatalf("depth %d: %v", depth, err)
		}
		if sub.Depth != depth || len(sub.Parents) != depth || sub.Parents[depth-1] != parent.Addr || sub.Expires.After(task.Expires) {
			t.Fatalf("sub-agent at depth %d: %+v", depth, sub)
		}
		parent = sub
	}
	if _, err := c.StartTask(ctx, localapi.TaskRequest{Parent: parent.ID}); !errors.As(err, &apiErr) || apiErr.Status != 422 || apiErr.Code != localapi.CodeRefused {
		t.Fatalf("too deep: %v", err)
	}
	if _, err := c.StartTask(ctx, localapi.TaskRequest{Parent: "nope"}); !errors.As(err, &apiErr) || apiErr.Status != 404 || apiErr.Code != localapi.CodeNotFound {
		t.Fatalf("unknown parent: %v", err)
	}

	tasks, err = c.Tasks(ctx)
	if err != nil || len(tasks) != identity.MaxDelegationDepth {
		t.Fatalf("tasks = %+v, %v", tasks, err)
	}
	for i, tk := range tasks { // all expire with the root: ordered by depth
		if tk.Depth != i+1 || !tk.Expires.Equal(task.Expires) {
			t.Errorf("tasks[%d] = %+v", i, tk)
		}
	}

	if err := c.EndTask(ctx, parent.ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := n.Task(parent.Addr); ok {
		t.Fatal("task still running after DELETE")
	}
	if err := c.EndTask(ctx, parent.ID); !errors.As(err, &apiErr) || apiErr.Status != 404 || apiErr.Code != localapi.CodeNotFound {
		t.Fatalf("end twice: %v", err)
	}
	if _, err := c.WhoIs(ctx, parent.Addr); !errors.As(err, &apiErr) || apiErr.Status != 404 {
		t.Fatalf("whois ended task: %v", err)
	}
	tasks, _ = c.Tasks(ctx)
	if len(tasks) != identity.MaxDelegationDepth-1 {
		t.Fatalf("after end: %+v", tasks)
	}
}

func TestTaskErrors(t *testing.T) {
	_, srv, sock := serveMember(t)
	for _, tc := range []struct {
		method, path, body string
		status             int
		code               string
		bad                bool // counted as a bad request
	}{
		{"POST", "/v1/tasks", `{"class":"x","clas":"y"}`, 400, localapi.CodeBadRequest, true},
		{"POST", "/v1/tasks", `{"ttl":"10 minutes"}`, 400, localapi.CodeBadRequest, true},
		{"POST", "/v1/tasks", `{"ttl":600}`, 400, localapi.CodeBadRequest, true},
		{"POST", "/v1/tasks", `{"ttl":"-1m"}`, 400, localapi.CodeBadRequest, true},
		{"POST", "/v1/tasks", `{"budget":{"rate":1,"flows":2}}`, 400, localapi.CodeBadRequest, true},
		{"POST", "/v1/tasks", `{} {}`, 400, localapi.CodeBadRequest, true},
		{"POST", "/v1/tasks", ``, 400, localapi.CodeBadRequest, true},
		{"POST", "/v1/tasks", `[]`, 400, localapi.CodeBadRequest, true},
		{"POST", "/v1/tasks?x=1", `{}`, 400, localapi.CodeBadRequest, true},
		{"POST", "/v1/tasks", `{"parent":"nope"}`, 404, localapi.CodeNotFound, false},
		{"POST", "/v1/tasks", `{"ttl":"1000000h"}`, 422, localapi.CodeRefused, false},
		{"PUT", "/v1/tasks", `{}`, 405, localapi.CodeMethodNotAllowed, true},
		{"GET", "/v1/tasks/abc", ``, 405, localapi.CodeMethodNotAllowed, true},
		{"DELETE", "/v1/tasks/abc", ``, 404, localapi.CodeNotFound, false},
		{"DELETE", "/v1/tasks", ``, 405, localapi.CodeMethodNotAllowed, true},
		{"DELETE", "/v1/tasks/a/b", ``, 404, localapi.CodeNotFound, true},
	} {
		before := srv.BadRequests()
		status, eb := do(t, sock, tc.method, tc.path, tc.body)
		if status != tc.status || eb.Code != tc.code {
			t.Errorf("%s %s %s: %d %+v, want %d %s", tc.method, tc.path, tc.body, status, eb, tc.status, tc.code)
		}
		if counted := srv.BadRequests() - before; counted != map[bool]uint64{true: 1}[tc.bad] {
			t.Errorf("%s %s %s: counted %d bad requests", tc.method, tc.path, tc.body, counted)
		}
	}
	// What curl would send: 201 with the task.
	status, _ := do(t, sock, "POST", "/v1/tasks", `{"class":"tool-call","ttl":"10m","scope":["a"],"budget":{"rate":5}}`)
	if status != http.StatusCreated {
		t.Fatalf("POST /v1/tasks: %d", status)
	}
}

func TestTasksWithoutMembership(t *testing.T) {
	_, _, sock := serve(t)
	c := &localapi.Client{Socket: sock}
	var apiErr *localapi.Error
	if _, err := c.StartTask(context.Background(), localapi.TaskRequest{Class: "x"}); !errors.As(err, &apiErr) || apiErr.Status != 409 || apiErr.Code != localapi.CodeNoMembership {
		t.Fatalf("start without membership: %v", err)
	}
	if tasks, err := c.Tasks(context.Background()); err != nil || len(tasks) != 0 {
		t.Fatalf("tasks = %v, %v", tasks, err)
	}
}

func TestTaskRequestJSON(t *testing.T) {
	in := localapi.TaskRequest{ID: "x", Class: "c", TTL: 90 * time.Second, Parent: "p", Budget: identity.Budget{Bytes: 7}}
	b, err := json.Marshal(in)
	if err != nil || string(b) != `{"id":"x","class":"c","budget":{"bytes":7},"ttl":"1m30s","parent":"p"}` {
		t.Fatalf("marshal = %s, %v", b, err)
	}
	var out localapi.TaskRequest
	if err := json.Unmarshal(b, &out); err != nil || out.TTL != in.TTL || out.ID != "x" || out.Budget.Bytes != 7 || out.Parent != "p" {
		t.Fatalf("unmarshal = %+v, %v", out, err)
	}
	if b, _ := json.Marshal(localapi.TaskRequest{}); string(b) != `{}` {
		t.Fatalf("zero request = %s", b)
	}
}
