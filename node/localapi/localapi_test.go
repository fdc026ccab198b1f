package localapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
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
	"github.com/agent6/agent6/node/card"
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
	if st.Netstack == nil {
		t.Error("an embedded node's status lacks its netstack counters")
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

// get requests path on the LocalAPI socket and returns status and body.
func get(t *testing.T, sock, path string) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://agent6" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestWhoIs(t *testing.T) {
	n, srv, sock := serve(t)
	c := &localapi.Client{Socket: sock}
	who, err := c.WhoIs(context.Background(), n.Addr())
	if err != nil || !who.Self || who.Addr != n.Addr() || !who.PublicKey.Equal(n.PublicKey()) {
		t.Fatalf("whois self = %+v, %v", who, err)
	}
	k, _ := identity.GeneratePrivateKey()
	unknown := k.WireGuard().Public().Addr()
	_, err = c.WhoIs(context.Background(), unknown)
	var apiErr *localapi.Error
	if !errors.As(err, &apiErr) || apiErr.Status != 404 || apiErr.Code != localapi.CodeNotFound {
		t.Fatalf("whois unknown: %v", err)
	}
	for _, tc := range []struct {
		path   string
		status int
		code   string
	}{
		{"/v1/whois", 400, localapi.CodeBadRequest},
		{"/v1/whois?addr=", 400, localapi.CodeBadRequest},
		{"/v1/whois?addr=not-an-address", 400, localapi.CodeBadRequest},
		{"/v1/whois?addr=192.0.2.1", 400, localapi.CodeBadRequest}, // not an overlay address
		{"/v1/whois?addr=" + n.Addr().String() + "&addr=" + n.Addr().String(), 400, localapi.CodeBadRequest},
		{"/v1/whois?address=" + n.Addr().String(), 400, localapi.CodeBadRequest},
		{"/v1/whois?addr=" + unknown.String(), 404, localapi.CodeNotFound},
		{"/v1/discover", 409, localapi.CodeNoMembership},
		{"/v1/discover?skil=x", 400, localapi.CodeBadRequest},
	} {
		status, body := get(t, sock, tc.path)
		var eb localapi.ErrorBody
		if err := json.Unmarshal([]byte(body), &eb); err != nil || status != tc.status || eb.Code != tc.code || eb.Error == "" {
			t.Errorf("GET %s: %d %s, want %d %s", tc.path, status, body, tc.status, tc.code)
		}
	}
	if got := srv.BadRequests(); got != 7 {
		t.Errorf("bad requests counted = %d, want 7", got)
	}
	// The bad requests show in the metrics, with the filter's counters.
	status, body := get(t, sock, "/metrics")
	if status != 200 {
		t.Fatalf("GET /metrics: %d %s", status, body)
	}
	for _, want := range []string{
		"agent6_localapi_bad_requests_total 7\n",
		`agent6_info{address="` + n.Addr().String() + `"`,
		`agent6_filter_packets_total{direction="in"}`,
		`agent6_filter_bytes_total{direction="out"}`,
		"agent6_filter_flows ",
		"agent6_peers 0\n",
		`agent6_wireguard_handshake_crossings_total{outcome="answered"} 0` + "\n",
		`agent6_wireguard_handshake_crossings_total{outcome="released"} 0` + "\n",
		`agent6_wireguard_handshake_crossings_total{outcome="superseded"} 0` + "\n",
		`agent6_wireguard_handshake_crossings_total{outcome="sent_late"} 0` + "\n",
		"agent6_wireguard_handshake_redelivered_total 0\n",
		"agent6_netstack_udp_receive_buffer_drops_total ",
		"agent6_netstack_udp_unknown_port_total ",
		"agent6_netstack_tcp_retransmits_total ",
		"go_goroutines ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(body, "agent6_membership_members") || strings.Contains(body, "agent6_dns_queries_total") {
		t.Error("membership or DNS metrics from a node without membership")
	}
}

// Discover and metrics on a node with membership and a peer in another
// trust domain it accepts.
func TestDiscoverAndMetrics(t *testing.T) {
	now := time.Now()
	caA, _ := identity.NewCA("example.org", time.Hour, now)
	caB, _ := identity.NewCA("other.example", time.Hour, now)
	bundle, err := identity.ParseBundle(append(caA.CertificatePEM(), caB.CertificatePEM()...))
	if err != nil {
		t.Fatal(err)
	}
	mk := func(ca *identity.CA, name string, c *card.Card, join ...string) *node.Node {
		k, _ := identity.GeneratePrivateKey()
		der, err := ca.Issue(identity.IssueRequest{Key: k.Public(), Name: name, Groups: []string{"g-" + name}}, now)
		if err != nil {
			t.Fatal(err)
		}
		n := &node.Node{Key: k, Credential: der, Bundle: bundle, Join: join, Card: c,
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}}
		if err := n.Up(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	seed := mk(caA, "seed", nil)
	tok, _ := seed.Invite()
	mk(caA, "planner", &card.Card{Name: "Planner", Skills: []card.Skill{{ID: "plan", Tags: []string{"travel"}}}}, tok)
	mk(caB, "search", &card.Card{Name: "Search", Skills: []card.Skill{{ID: "search"}}}, tok)

	sock := filepath.Join(t.TempDir(), "a.sock")
	ln, err := localapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go (&localapi.Server{Node: seed}).Serve(ctx, ln)
	c := &localapi.Client{Socket: sock}

	var all []node.Discovery
	deadline := time.Now().Add(20 * time.Second)
	for len(all) < 2 && time.Now().Before(deadline) {
		if all, err = c.Discover(ctx, node.Query{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(all) != 2 || all[0].ID != "spiffe://example.org/agent/planner" || !all[0].Decision.Allow ||
		all[1].ID != "spiffe://other.example/agent/search" || all[1].Decision.Allow || all[1].Decision.Reason == "" {
		t.Fatalf("discover = %+v", all)
	}
	for q, want := range map[node.Query]string{
		{Skill: "plan"}:                  "spiffe://example.org/agent/planner",
		{Tag: "travel"}:                  "spiffe://example.org/agent/planner",
		{Name: "search"}:                 "spiffe://other.example/agent/search",
		{TrustDomain: "other.example"}:   "spiffe://other.example/agent/search",
		{Group: "g-planner"}:             "spiffe://example.org/agent/planner",
		{Skill: "search", Group: "none"}: "",
	} {
		got, err := c.Discover(ctx, q)
		if err != nil || (want == "") != (len(got) == 0) || (want != "" && (len(got) != 1 || got[0].ID != want)) {
			t.Errorf("discover %+v = %+v, %v; want %s", q, got, err, want)
		}
	}
	who, err := c.WhoIs(ctx, all[1].Addr)
	if err != nil || who.ID != "spiffe://other.example/agent/search" || who.TrustDomain != "other.example" {
		t.Fatalf("whois = %+v, %v", who, err)
	}

	status, body := get(t, sock, "/metrics")
	if status != 200 {
		t.Fatalf("GET /metrics: %d", status)
	}
	for _, want := range []string{
		"agent6_membership_members 2\n",
		"agent6_membership_joined 1\n",
		`agent6_dns_queries_total{result="answered"} 0`,
		`spiffe_id="spiffe://example.org/agent/seed",trust_domain="example.org"`,
		"# TYPE agent6_filter_packets_total counter",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
