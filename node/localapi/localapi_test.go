package localapi_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
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
		{"POST", "/v1/revocations", 400, localapi.CodeBadRequest},
		{"GET", "/v1/revocations", 405, localapi.CodeMethodNotAllowed},
		{"GET", "/v1/peers", 409, localapi.CodeNoMembership},
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
	if srv.BadRequests() != 4 {
		t.Errorf("bad requests counted = %d, want 4", srv.BadRequests())
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

// With membership: peers, invite and revocation through the client.
func TestMembershipEndpoints(t *testing.T) {
	ca, err := identity.NewCA("example.org", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	bundle, _ := identity.ParseBundle(ca.CertificatePEM())
	mk := func(name string, join ...string) *node.Node {
		k, _ := identity.GeneratePrivateKey()
		der, err := ca.Issue(identity.IssueRequest{Key: k.Public(), Name: name}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		n := &node.Node{Key: k, Credential: der, Bundle: bundle, Join: join,
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}}
		if err := n.Up(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	seed := mk("seed")
	sock := filepath.Join(t.TempDir(), "a.sock")
	ln, err := localapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go (&localapi.Server{Node: seed}).Serve(ctx, ln)
	c := &localapi.Client{Socket: sock}

	tok, err := c.Invite(ctx)
	if err != nil || !strings.HasPrefix(tok, "agent6://"+seed.PublicKey().String()+"@127.0.0.1:") {
		t.Fatalf("invite = %q, %v", tok, err)
	}
	other := mk("other", tok)
	<-other.Joined()
	var peers []node.Member
	for range 100 {
		if peers, err = c.Peers(ctx); err == nil && len(peers) == 1 && peers[0].State == "alive" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(peers) != 1 || peers[0].Addr != other.Addr() || peers[0].ID != "spiffe://example.org/agent/other" {
		t.Fatalf("peers = %+v, %v", peers, err)
	}
	rec, _ := ca.Revoke(other.Credential, time.Now())
	res, err := c.Revoke(ctx, identity.MarshalRevocationPEM(rec))
	if err != nil || res.ID != "spiffe://example.org/agent/other" {
		t.Fatalf("revoke = %+v, %v", res, err)
	}
	peers, _ = c.Peers(ctx)
	if len(peers) != 1 || peers[0].State != "revoked" {
		t.Fatalf("after revocation: %+v", peers)
	}
	st, err := c.Status(ctx)
	if err != nil || st.Membership == nil || st.Membership.SPIFFEID != "spiffe://example.org/agent/seed" || st.Membership.TrustDomains[0] != "example.org" {
		t.Fatalf("status membership = %+v, %v", st.Membership, err)
	}
	// A revocation signed by someone else is refused with a reason.
	k, _ := identity.GeneratePrivateKey()
	fake, _ := identity.SignRecord(k, identity.RecordRevocation, []byte(`{}`))
	if _, err := c.Revoke(ctx, identity.MarshalRevocationPEM(fake)); err == nil || !strings.Contains(err.Error(), localapi.CodeRefused) {
		t.Fatalf("forged revocation: %v", err)
	}
}
