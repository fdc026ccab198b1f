package localapi_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/localapi"
)

func serve(t *testing.T) (*node.Node, *localapi.Server, string) {
	t.Helper()
	n := &node.Node{}
	if err := n.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	sock := filepath.Join(t.TempDir(), "run", "agent6.sock")
	ln, err := localapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &localapi.Server{Node: n}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Errorf("socket %s left behind after shutdown", sock)
		}
	})
	return n, srv, sock
}

func TestStatus(t *testing.T) {
	n, _, sock := serve(t)
	st, err := (&localapi.Client{Socket: sock}).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Addr != n.Addr() || !st.PublicKey.Equal(n.PublicKey()) || st.Mode != "embedded" {
		t.Fatalf("status = %+v", st)
	}
}

func TestErrorsAreJSON(t *testing.T) {
	_, srv, sock := serve(t)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/v1/nope", 404, localapi.CodeNotFound},
		{"POST", "/v1/status", 405, localapi.CodeMethodNotAllowed},
	} {
		req, _ := http.NewRequest(tc.method, "http://agent6"+tc.path, strings.NewReader("{"))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var eb localapi.ErrorBody
		err = json.NewDecoder(resp.Body).Decode(&eb)
		resp.Body.Close()
		if err != nil || resp.StatusCode != tc.status || eb.Code != tc.code || eb.Error == "" {
			t.Errorf("%s %s: %d %+v (%v), want %d %s", tc.method, tc.path, resp.StatusCode, eb, err, tc.status, tc.code)
		}
	}
	if srv.BadRequests() != 2 {
		t.Errorf("bad requests counted = %d, want 2", srv.BadRequests())
	}
}

func TestListenRefusesLiveSocket(t *testing.T) {
	_, _, sock := serve(t)
	if _, err := localapi.Listen(sock); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Listen on a live socket: %v", err)
	}
}

func TestClientUnreachable(t *testing.T) {
	_, err := (&localapi.Client{Socket: filepath.Join(t.TempDir(), "none.sock")}).Status(context.Background())
	if err == nil || !strings.Contains(err.Error(), "agent6 up") {
		t.Fatalf("err = %v, want a hint to run agent6 up", err)
	}
}
