// Package localapi is the node's local control surface: HTTP/JSON on a
// unix socket, for the agent6 CLI and for agent runtimes in any language.
//
//	GET  /v1/status       node.Status: own address and keys, peers, filter and membership counters
//	GET  /v1/peers        []node.Member: every agent known through membership
//	GET  /v1/whois?addr=A node.WhoIsResult: who holds overlay address A
//	GET  /v1/discover?skill=&tag=&name=&trust_domain=&group=
//	                      []node.Discovery: matching agents, with the policy decision for this node
//	GET  /v1/invite       {"token": "agent6://KEY@host:port"}
//	POST /v1/revocations  body: a revocation (PEM from `agent6 ca revoke`); applied and gossiped
//	POST /v1/tasks        body: TaskRequest {"class", "sensitivity", "scope", "ttl": "10m", "budget",
//	                      "parent": id, "id": caller's name}; 201 Task {"id", "address", "expires", "depth",
//	                      "uid": the caller's, ...}; a TTL beyond the node's credential or the parent is 422
//	GET  /v1/tasks        []Task: the running tasks
//	DELETE /v1/tasks/{id} 204: the task ends, its address goes and its peers are told
//	GET  /v1/capture?peer=&duration=
//	                      a pcap stream of the overlay packets entering and leaving WireGuard
//	GET  /metrics         Prometheus text: filter, membership, DNS and LocalAPI counters
//
// Errors are JSON objects {"error": message, "code": stable-code} with a
// 4xx or 5xx status.
//
// # Callers
//
// Whoever can open the socket (mode 0660: its owner and its group, see
// ListenGroup) may read every GET endpoint but /v1/capture, and start
// tasks. Writes depend on who the caller is, which the kernel says for
// each connection (SO_PEERCRED): a task belongs to the uid that started
// it, and only that uid or root may end it or start a sub-agent of it;
// revocations and captures need root or a member of one of
// Server.AdminGroups. The user the node runs as counts as root. Anything
// else is refused with 403 and code "forbidden", counted
// (agent6_localapi_forbidden_total) and logged, at most once every 10 s.
package localapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
)

// Error codes in error responses; stable across releases.
const (
	CodeNotFound         = "not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeBadRequest       = "bad_request"
	CodeRefused          = "refused"
	CodeNoMembership     = "no_membership"
	CodeForbidden        = "forbidden"
	CodeInternal         = "internal"
)

// maxBody bounds request bodies.
const maxBody = 64 << 10

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// Error is an error response the client received.
type Error struct {
	Path    string // the request path
	Status  int    // HTTP status
	Code    string // one of the Code constants
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("localapi: %s: %s (%s)", e.Path, e.Message, e.Code)
}

// Server serves the LocalAPI for one node.
type Server struct {
	Node   *node.Node
	Logger *slog.Logger
	// AdminGroups are the groups whose members may make the admin writes
	// (revocations), as root may. Nil: root and the node's own user only.
	AdminGroups []uint32

	badRequests      atomic.Uint64
	forbidden        atomic.Uint64
	lastForbiddenLog atomic.Int64 // unix nanos

	mu     sync.Mutex            // guards owners
	owners map[netip.Addr]uint32 // task address -> the uid that started it

	stopping context.Context // Serve's: done when it shuts down (streams end)
}

// Handler returns the API's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/status", s.only(http.MethodGet, s.status))
	mux.HandleFunc("/v1/peers", s.only(http.MethodGet, s.peers))
	mux.HandleFunc("/v1/whois", s.only(http.MethodGet, s.whois))
	mux.HandleFunc("/v1/discover", s.only(http.MethodGet, s.discover))
	mux.HandleFunc("/v1/invite", s.only(http.MethodGet, s.invite))
	mux.Handle("/metrics", s.only(http.MethodGet, s.metricsHandler().ServeHTTP))
	mux.HandleFunc("/v1/revocations", s.only(http.MethodPost, s.revoke))
	mux.HandleFunc("/v1/tasks", s.tasks)
	mux.HandleFunc("/v1/tasks/{id}", s.only(http.MethodDelete, s.endTask))
	mux.HandleFunc("/v1/capture", s.only(http.MethodGet, s.capture))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		n := s.badRequests.Add(1)
		if s.Logger != nil {
			s.Logger.Warn("localapi: unknown endpoint", "method", r.Method, "path", r.URL.Path, "total", n)
		}
		writeError(w, http.StatusNotFound, CodeNotFound, fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// only refuses methods other than m with a JSON 405.
func (s *Server) only(m string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != m {
			s.methodNotAllowed(w, r, m)
			return
		}
		h(w, r)
	}
}

// methodNotAllowed answers a JSON 405 naming the allowed methods, and
// counts the request as malformed.
func (s *Server) methodNotAllowed(w http.ResponseWriter, r *http.Request, allowed ...string) {
	s.badRequests.Add(1)
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	writeError(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed, fmt.Sprintf("%s %s: use %s", r.Method, r.URL.Path, strings.Join(allowed, " or ")))
}

// BadRequests returns how many requests were refused as malformed.
func (s *Server) BadRequests() uint64 { return s.badRequests.Load() }

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st, err := s.Node.Status()
	if err != nil {
		writeError(w, http.StatusInternalServerError, CodeInternal, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) peers(w http.ResponseWriter, r *http.Request) {
	if s.Node.Membership() == nil {
		writeError(w, http.StatusConflict, CodeNoMembership, "this node runs without membership (no credential and trust_bundle)")
		return
	}
	members := s.Node.Members()
	if members == nil {
		members = []node.Member{}
	}
	writeJSON(w, http.StatusOK, members)
}

// params checks that the query has only the named parameters, each at
// most once; otherwise it answers 400 and reports false. A misspelt
// parameter is an error, never a silent "any".
func (s *Server) params(w http.ResponseWriter, q url.Values, names ...string) bool {
	for k, v := range q {
		switch {
		case len(names) == 0:
			s.badRequest(w, fmt.Sprintf("unknown parameter %q (this endpoint takes none)", k))
			return false
		case !slices.Contains(names, k):
			s.badRequest(w, fmt.Sprintf("unknown parameter %q (want %s)", k, strings.Join(names, ", ")))
			return false
		case len(v) > 1:
			s.badRequest(w, fmt.Sprintf("parameter %q given %d times", k, len(v)))
			return false
		}
	}
	return true
}

func (s *Server) badRequest(w http.ResponseWriter, msg string) {
	s.badRequests.Add(1)
	writeError(w, http.StatusBadRequest, CodeBadRequest, msg)
}

func (s *Server) whois(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !s.params(w, q, "addr") {
		return
	}
	raw := q.Get("addr")
	if raw == "" {
		s.badRequest(w, "missing parameter addr (an overlay address)")
		return
	}
	addr, err := netip.ParseAddr(raw)
	if err != nil {
		s.badRequest(w, fmt.Sprintf("addr %q is not an IP address", raw))
		return
	}
	res, err := s.Node.WhoIs(addr)
	switch {
	case errors.Is(err, node.ErrNotOverlay):
		s.badRequest(w, err.Error())
	case errors.Is(err, node.ErrUnknownAddr):
		writeError(w, http.StatusNotFound, CodeNotFound, err.Error())
	case err != nil:
		writeError(w, http.StatusInternalServerError, CodeInternal, err.Error())
	default:
		writeJSON(w, http.StatusOK, res)
	}
}

func (s *Server) discover(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !s.params(w, q, "skill", "tag", "name", "trust_domain", "group") {
		return
	}
	res, err := s.Node.Discover(r.Context(), node.Query{
		Skill: q.Get("skill"), Tag: q.Get("tag"), Name: q.Get("name"),
		TrustDomain: q.Get("trust_domain"), Group: q.Get("group"),
	})
	switch {
	case errors.Is(err, node.ErrNoMembership):
		writeError(w, http.StatusConflict, CodeNoMembership, "this node runs without membership (no credential and trust_bundle)")
	case err != nil:
		writeError(w, http.StatusInternalServerError, CodeInternal, err.Error())
	default:
		writeJSON(w, http.StatusOK, res)
	}
}

// InviteResponse is the body of GET /v1/invite.
type InviteResponse struct {
	Token string `json:"token"`
}

func (s *Server) invite(w http.ResponseWriter, r *http.Request) {
	tok, err := s.Node.Invite()
	if err != nil {
		writeError(w, http.StatusInternalServerError, CodeInternal, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, InviteResponse{Token: tok})
}

// RevokeResponse is the body of a successful POST /v1/revocations.
type RevokeResponse struct {
	TrustDomain string `json:"trust_domain"`
	ID          string `json:"spiffe_id"`
	Serial      string `json:"serial"`
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	if !s.mayWrite(w, r, s.admin, "root or a member of the LocalAPI's admin group") {
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		s.badRequests.Add(1)
		writeError(w, http.StatusBadRequest, CodeBadRequest, "body unreadable or larger than 64 KiB")
		return
	}
	rec, err := identity.ParseRevocationPEM(body)
	if err != nil {
		s.badRequests.Add(1)
		writeError(w, http.StatusBadRequest, CodeBadRequest, err.Error())
		return
	}
	if s.Node.Membership() == nil {
		writeError(w, http.StatusConflict, CodeNoMembership, "this node runs without membership (no credential and trust_bundle)")
		return
	}
	rev, err := s.Node.Revoke(rec.Marshal())
	if err != nil {
		s.badRequests.Add(1)
		writeError(w, http.StatusUnprocessableEntity, CodeRefused, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, RevokeResponse{TrustDomain: rev.TrustDomain, ID: rev.ID, Serial: rev.Serial})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, ErrorBody{Error: msg, Code: code})
}

// Listen creates the unix socket at path (and its directory), replacing a
// stale socket that nobody serves, and refusing one that is in use. The
// socket is mode 0660, of the process's user and group.
func Listen(path string) (net.Listener, error) { return ListenGroup(path, -1) }

// ListenGroup is Listen with the socket given group gid (-1: the
// process's), whose members may then use the LocalAPI.
func ListenGroup(path string, gid int) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("localapi: socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("localapi: %s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("localapi: %s is in use by another agent6", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("localapi: listen: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("localapi: %w", err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("localapi: socket group: %w", err)
		}
	}
	return ln, nil
}

// Serve serves the API on ln until ctx is done, then shuts down, waiting
// up to five seconds for requests in flight. Closing ln removes a unix
// socket file. Each connection carries its caller's credentials, which
// the writes need (see the package doc).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.stopping = ctx
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext:       s.connContext,
	}
	if s.Logger != nil {
		srv.ErrorLog = slog.NewLogLogger(s.Logger.Handler(), slog.LevelWarn)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("localapi: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

// Client calls a node's LocalAPI.
type Client struct {
	// Socket is the unix socket path.
	Socket string
}

func (c *Client) http() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", c.Socket)
		},
	}}
}

// Status returns the node's status.
func (c *Client) Status(ctx context.Context) (node.Status, error) {
	var st node.Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

// Peers returns the agents the node knows through membership.
func (c *Client) Peers(ctx context.Context) ([]node.Member, error) {
	var out []node.Member
	err := c.do(ctx, http.MethodGet, "/v1/peers", nil, &out)
	return out, err
}

// WhoIs returns who holds an overlay address. An address no known agent
// holds is an *Error with Code CodeNotFound.
func (c *Client) WhoIs(ctx context.Context, addr netip.Addr) (node.WhoIsResult, error) {
	var out node.WhoIsResult
	err := c.do(ctx, http.MethodGet, "/v1/whois?"+url.Values{"addr": {addr.String()}}.Encode(), nil, &out)
	return out, err
}

// Discover returns the agents matching q, each with the node's policy
// decision for reaching it.
func (c *Client) Discover(ctx context.Context, q node.Query) ([]node.Discovery, error) {
	v := url.Values{}
	for k, s := range map[string]string{"skill": q.Skill, "tag": q.Tag, "name": q.Name, "trust_domain": q.TrustDomain, "group": q.Group} {
		if s != "" {
			v.Set(k, s)
		}
	}
	path := "/v1/discover"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var out []node.Discovery
	err := c.do(ctx, http.MethodGet, path, nil, &out)
	return out, err
}

// Invite returns a join token for the node.
func (c *Client) Invite(ctx context.Context) (string, error) {
	var out InviteResponse
	err := c.do(ctx, http.MethodGet, "/v1/invite", nil, &out)
	return out.Token, err
}

// Revoke hands the node a revocation (PEM) to apply and gossip.
func (c *Client) Revoke(ctx context.Context, pemBytes []byte) (RevokeResponse, error) {
	var out RevokeResponse
	err := c.do(ctx, http.MethodPost, "/v1/revocations", pemBytes, &out)
	return out, err
}

// responseError reads an error response.
func responseError(path string, resp *http.Response) error {
	var eb ErrorBody
	if json.NewDecoder(resp.Body).Decode(&eb) != nil || eb.Error == "" {
		return fmt.Errorf("localapi: %s: HTTP %d", path, resp.StatusCode)
	}
	return &Error{Path: path, Status: resp.StatusCode, Code: eb.Code, Message: eb.Error}
}

func (c *Client) do(ctx context.Context, method, path string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent6"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return fmt.Errorf("localapi: cannot reach agent6 at %s (is `agent6 up` running?): %w", c.Socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return responseError(path, resp)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("localapi: %s: bad response: %w", path, err)
	}
	return nil
}
