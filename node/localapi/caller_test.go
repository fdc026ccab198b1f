package localapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/localapi"
)

// A task started through the socket belongs to the caller's uid, which
// the kernel reports (SO_PEERCRED); listed tasks show it.
func TestTaskOwner(t *testing.T) {
	_, _, sock := serveMember(t)
	c := &localapi.Client{Socket: sock}
	ctx := context.Background()
	task, err := c.StartTask(ctx, localapi.TaskRequest{Class: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if task.UID == nil || *task.UID != uint32(os.Getuid()) {
		t.Fatalf("task uid = %v, want %d", task.UID, os.Getuid())
	}
	tasks, err := c.Tasks(ctx)
	if err != nil || len(tasks) != 1 || tasks[0].UID == nil || *tasks[0].UID != uint32(os.Getuid()) {
		t.Fatalf("tasks = %+v, %v", tasks, err)
	}
}

// Served without Serve (no caller credentials), the handler still reads
// but refuses every write with a JSON 403, and counts it.
func TestWritesNeedCredentials(t *testing.T) {
	n := &node.Node{}
	if err := n.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	srv := &localapi.Server{Node: n}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	for _, tc := range []struct {
		method, path, body string
		status             int
	}{
		{"GET", "/v1/status", "", 200},
		{"POST", "/v1/revocations", "x", 403},
		{"GET", "/v1/capture?duration=1s", "", 403},
		{"POST", "/v1/tasks", `{"class":"x"}`, 409}, // no membership, said before the caller is asked
	} {
		req, _ := http.NewRequest(tc.method, hs.URL+tc.path, strings.NewReader(tc.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var eb localapi.ErrorBody
		json.NewDecoder(resp.Body).Decode(&eb)
		resp.Body.Close()
		if resp.StatusCode != tc.status || (tc.status == 403 && (eb.Code != localapi.CodeForbidden || !strings.Contains(eb.Error, "unknown"))) {
			t.Errorf("%s %s: %d %+v, want %d", tc.method, tc.path, resp.StatusCode, eb, tc.status)
		}
	}
	if srv.Forbidden() != 2 {
		t.Errorf("forbidden = %d, want 2", srv.Forbidden())
	}
}

// callerHelperEnv makes TestCallerHelper, run as another user by
// TestCallersByUID, send one request to the LocalAPI: "SOCKET METHOD PATH
// [BODY]". It prints the status and the error code (or the task id).
const callerHelperEnv = "AGENT6_TEST_CALLER"

func TestCallerHelper(t *testing.T) {
	f := strings.SplitN(os.Getenv(callerHelperEnv), " ", 4)
	if len(f) < 3 {
		t.Skip("helper process for TestCallersByUID")
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", f[0])
	}}}
	body := ""
	if len(f) == 4 {
		body = f[3]
	}
	req, _ := http.NewRequest(f[1], "http://agent6"+f[2], strings.NewReader(body))
	resp, err := hc.Do(req)
	if err != nil {
		fmt.Println("error", err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out struct {
		Code string `json:"code"`
		ID   string `json:"id"`
	}
	json.Unmarshal(b, &out)
	fmt.Println(resp.StatusCode, out.Code+out.ID)
}

// The socket's group, and an admin group, for TestCallersByUID; neither
// needs a name.
const (
	sockGID  = 4243
	adminGID = 4242
	nobody   = 65534
)

// requireRoot skips unless the test runs as root (it starts processes as
// other users), except in CI, which runs as root.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("CI must run as root: this test starts processes as other users")
	}
	t.Skip("needs root: starts processes as other users to check the LocalAPI's SO_PEERCRED rules")
}

// TestCallersByUID runs LocalAPI clients as other users (a child process
// with SysProcAttr.Credential): each may read and start tasks, end and
// sub-delegate only its own, and revoke only as a member of the admin
// group; a process outside the socket's group cannot connect at all.
func TestCallersByUID(t *testing.T) {
	requireRoot(t)
	// A directory every user may enter, with a copy of this test binary
	// (go test's build directory is private).
	dir, err := os.MkdirTemp("", "agent6-callers-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "localapi.test")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(self); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}

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
	sock := filepath.Join(dir, "agent6.sock")
	ln, err := localapi.ListenGroup(sock, sockGID)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Sys().(*syscall.Stat_t).Gid != sockGID || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket: %v, %v", fi.Mode(), err)
	}
	srv := &localapi.Server{Node: n, AdminGroups: []uint32{adminGID}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	// as sends one request as uid with primary group gid and supplementary
	// groups, and returns "STATUS CODE-OR-ID".
	as := func(uid, gid uint32, groups []uint32, method, path, body string) string {
		t.Helper()
		cmd := exec.Command(bin, "-test.run=^TestCallerHelper$")
		cmd.Dir = dir
		// No race detector pause at exit (it waits 1 s for late reports).
		cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", callerHelperEnv+"="+strings.Join([]string{sock, method, path, body}, " "))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper as uid %d: %v\n%s", uid, err, out)
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	user := func(method, path, body string) string {
		return as(nobody, nobody, []uint32{sockGID}, method, path, body)
	}
	code := func(out string) string { return strings.Fields(out)[0] }
	id := func(t *testing.T, out string) string {
		t.Helper()
		f := strings.Fields(out)
		if len(f) != 2 || f[0] != "201" {
			t.Fatalf("start task: %s", out)
		}
		return f[1]
	}

	c := &localapi.Client{Socket: sock}
	rootTask, err := c.StartTask(context.Background(), localapi.TaskRequest{Class: "root's"})
	if err != nil {
		t.Fatal(err)
	}
	if got := user("GET", "/v1/status", ""); code(got) != "200" {
		t.Fatalf("read as another user: %s", got)
	}
	mine := id(t, user("POST", "/v1/tasks", `{"class":"mine"}`))
	for _, tc := range []struct{ what, method, path, body, want string }{
		{"end root's task", "DELETE", "/v1/tasks/" + rootTask.ID, "", "403 forbidden"},
		{"sub-agent of root's task", "POST", "/v1/tasks", `{"parent":"` + rootTask.ID + `"}`, "403 forbidden"},
		{"revoke", "POST", "/v1/revocations", "x", "403 forbidden"},
		{"capture", "GET", "/v1/capture?duration=1s", "", "403 forbidden"},
	} {
		if got := user(tc.method, tc.path, tc.body); got != tc.want {
			t.Errorf("%s as another user: %s, want %s", tc.what, got, tc.want)
		}
	}
	if got := as(nobody-1, nobody-1, []uint32{sockGID}, "DELETE", "/v1/tasks/"+mine, ""); got != "403 forbidden" {
		t.Errorf("a third user ends the task: %s", got)
	}
	id(t, user("POST", "/v1/tasks", `{"parent":"`+mine+`"}`)) // its own sub-agent
	if got := user("DELETE", "/v1/tasks/"+mine, ""); code(got) != "204" {
		t.Errorf("end own task: %s", got)
	}
	// Revocations: the admin group, as primary or supplementary group,
	// passes (and the bad body is then refused as such).
	if got := as(nobody, adminGID, []uint32{sockGID}, "POST", "/v1/revocations", "x"); got != "400 bad_request" {
		t.Errorf("revoke as the admin group: %s", got)
	}
	if got := as(nobody, nobody, []uint32{sockGID, adminGID}, "POST", "/v1/revocations", "x"); got != "400 bad_request" {
		t.Errorf("revoke as a supplementary member of the admin group: %s", got)
	}
	// Outside the socket's group, the kernel refuses the connection.
	if got := as(nobody, nobody, nil, "GET", "/v1/status", ""); !strings.Contains(got, "permission denied") {
		t.Errorf("a user outside the socket's group: %s", got)
	}
	// Root may end anyone's task.
	theirs := id(t, user("POST", "/v1/tasks", `{"class":"theirs"}`))
	if err := c.EndTask(context.Background(), theirs); err != nil {
		t.Errorf("root ends another user's task: %v", err)
	}
	var apiErr *localapi.Error
	if err := c.EndTask(context.Background(), theirs); !errors.As(err, &apiErr) || apiErr.Status != 404 {
		t.Errorf("task still there after root ended it: %v", err)
	}
	if got := srv.Forbidden(); got != 5 {
		t.Errorf("forbidden = %d, want 5", got)
	}
}
