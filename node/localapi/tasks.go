package localapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
)

// TaskRequest is the body of POST /v1/tasks. On the wire TTL is a Go
// duration string ("10m"); unknown fields are refused.
type TaskRequest struct {
	// ID is the caller's own name for the task. It never leaves the node;
	// peers (and the response) see only its pseudonym. Empty means a
	// random one.
	ID          string
	Class       string   // e.g. "tool-call"
	Sensitivity string   // e.g. "low", "pii"
	Scope       []string // what the task may reach
	Budget      identity.Budget
	// TTL is how long the task lives; 0 means the node's default (one
	// hour, cut to the node's credential or the parent task). A TTL that
	// would outlive either is refused (422, code "refused").
	TTL time.Duration
	// Parent is the id (pseudonym) of a running task: the new task is its
	// sub-agent, one level deeper.
	Parent string
}

// taskRequestJSON is TaskRequest's wire form.
type taskRequestJSON struct {
	ID          string          `json:"id,omitempty"`
	Class       string          `json:"class,omitempty"`
	Sensitivity string          `json:"sensitivity,omitempty"`
	Scope       []string        `json:"scope,omitempty"`
	Budget      identity.Budget `json:"budget,omitzero"`
	TTL         string          `json:"ttl,omitempty"`
	Parent      string          `json:"parent,omitempty"`
}

// MarshalJSON writes the wire form, TTL as a Go duration string.
func (r TaskRequest) MarshalJSON() ([]byte, error) {
	w := taskRequestJSON{ID: r.ID, Class: r.Class, Sensitivity: r.Sensitivity, Scope: r.Scope, Budget: r.Budget, Parent: r.Parent}
	if r.TTL != 0 {
		w.TTL = r.TTL.String()
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads the wire form, refusing unknown fields, a TTL that
// is not a Go duration, and a negative TTL.
func (r *TaskRequest) UnmarshalJSON(b []byte) error {
	var w taskRequestJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return err
	}
	var ttl time.Duration
	if w.TTL != "" {
		var err error
		if ttl, err = time.ParseDuration(w.TTL); err != nil {
			return fmt.Errorf("ttl %q is not a duration such as \"10m\" or \"1h30m\"", w.TTL)
		}
		if ttl < 0 {
			return fmt.Errorf("ttl %q is negative", w.TTL)
		}
	}
	*r = TaskRequest{ID: w.ID, Class: w.Class, Sensitivity: w.Sensitivity, Scope: w.Scope, Budget: w.Budget, TTL: ttl, Parent: w.Parent}
	return nil
}

// Task is a running task as the LocalAPI shows it: the body of a
// successful POST /v1/tasks, and each entry of GET /v1/tasks.
type Task struct {
	// ID is the task's pseudonym: what DELETE /v1/tasks/{id} and a
	// sub-agent's parent take, and what peers see. The caller's own ID is
	// never shown.
	ID          string       `json:"id"`
	Addr        netip.Addr   `json:"address"`
	Class       string       `json:"class,omitempty"`
	Sensitivity string       `json:"sensitivity,omitempty"`
	Scope       []string     `json:"scope,omitempty"`
	Depth       int          `json:"depth"`
	Expires     time.Time    `json:"expires"`
	Parents     []netip.Addr `json:"parents"` // the agent first, then parent tasks
	// UID is the user that started the task through the LocalAPI, who
	// (with root) may end it; absent for a task the node's program
	// started itself.
	UID *uint32 `json:"uid,omitempty"`
}

func (s *Server) taskOf(t *node.Task) Task {
	info := t.Info()
	out := Task{ID: t.Pseudonym(), Addr: t.Addr(), Class: info.Class, Sensitivity: info.Sensitivity, Scope: info.Scope,
		Depth: info.Depth, Expires: info.Expires, Parents: info.Parents}
	if uid, ok := s.owner(t.Addr()); ok {
		out.UID = &uid
	}
	return out
}

// findTask returns the running task whose pseudonym is id.
func (s *Server) findTask(id string) *node.Task {
	for _, t := range s.Node.Tasks() {
		if t.Pseudonym() == id {
			return t
		}
	}
	return nil
}

// tasks serves GET and POST /v1/tasks.
func (s *Server) tasks(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		s.listTasks(w, r)
	case http.MethodPost:
		s.startTask(w, r)
	default:
		s.methodNotAllowed(w, r, http.MethodGet, http.MethodPost)
	}
}

func (s *Server) listTasks(w http.ResponseWriter, r *http.Request) {
	if !s.params(w, r.URL.Query()) {
		return
	}
	out := []Task{}
	for _, t := range s.Node.Tasks() {
		out = append(out, s.taskOf(t))
	}
	// What ends next first; a parent before its sub-agents.
	slices.SortFunc(out, func(a, b Task) int {
		if c := a.Expires.Compare(b.Expires); c != 0 {
			return c
		}
		if a.Depth != b.Depth {
			return a.Depth - b.Depth
		}
		return a.Addr.Compare(b.Addr)
	})
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) startTask(w http.ResponseWriter, r *http.Request) {
	if !s.params(w, r.URL.Query()) {
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		s.badRequest(w, "body unreadable or larger than 64 KiB")
		return
	}
	var req TaskRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&req); err != nil {
		s.badRequest(w, fmt.Sprintf("body: %v (want a JSON object: class, sensitivity, scope, ttl, budget, parent, id)", err))
		return
	}
	if dec.More() {
		s.badRequest(w, "body: data after the JSON object")
		return
	}
	if s.Node.Membership() == nil {
		writeError(w, http.StatusConflict, CodeNoMembership, "this node runs without membership (no credential and trust_bundle); tasks need it")
		return
	}
	spec := node.TaskSpec{ID: req.ID, Class: req.Class, Sensitivity: req.Sensitivity, Scope: req.Scope, Budget: req.Budget, TTL: req.TTL}

	caller, known := callerOf(r)
	if !known {
		s.forbid(w, r, caller, known, "a caller whose uid is known (the task belongs to it)")
		return
	}
	if req.Parent != "" {
		if spec.Parent = s.findTask(req.Parent); spec.Parent == nil {
			writeError(w, http.StatusNotFound, CodeNotFound, fmt.Sprintf("no running task %q (parent)", req.Parent))
			return
		}
		if !s.mayWrite(w, r, s.ownerOrPrivileged(spec.Parent.Addr()), fmt.Sprintf("the uid that started task %s, or root", req.Parent)) {
			return
		}
	}
	t, err := s.Node.StartTask(r.Context(), spec)
	if t != nil && err != nil {
		t.End() // started, but the caller is gone
	}
	if err == nil {
		s.setOwner(t.Addr(), caller.UID)
	}
	switch {
	case errors.Is(err, node.ErrTaskDepth), errors.Is(err, node.ErrTaskExists), errors.Is(err, node.ErrTaskWider), errors.Is(err, node.ErrTaskTTL):
		writeError(w, http.StatusUnprocessableEntity, CodeRefused, err.Error())
	case errors.Is(err, node.ErrNoMembership):
		writeError(w, http.StatusConflict, CodeNoMembership, err.Error())
	case errors.Is(err, node.ErrTaskEnded):
		writeError(w, http.StatusNotFound, CodeNotFound, fmt.Sprintf("parent %q: %v", req.Parent, err))
	case err != nil:
		writeError(w, http.StatusInternalServerError, CodeInternal, err.Error())
	default:
		writeJSON(w, http.StatusCreated, s.taskOf(t))
	}
}

// endTask serves DELETE /v1/tasks/{id}.
func (s *Server) endTask(w http.ResponseWriter, r *http.Request) {
	if !s.params(w, r.URL.Query()) {
		return
	}
	id := r.PathValue("id")
	t := s.findTask(id)
	if t == nil {
		writeError(w, http.StatusNotFound, CodeNotFound, fmt.Sprintf("no running task %q", id))
		return
	}
	if !s.mayWrite(w, r, s.ownerOrPrivileged(t.Addr()), fmt.Sprintf("the uid that started task %s, or root", id)) {
		return
	}
	if err := t.End(); err != nil {
		writeError(w, http.StatusInternalServerError, CodeInternal, err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// StartTask starts a task (or, with Parent, a sub-agent) and returns its
// id and address. In sidecar mode the address is on the node's TUN device,
// so a local process can bind it and connect from it.
func (c *Client) StartTask(ctx context.Context, req TaskRequest) (Task, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return Task{}, err
	}
	var out Task
	err = c.do(ctx, http.MethodPost, "/v1/tasks", body, &out)
	return out, err
}

// Tasks returns the node's running tasks.
func (c *Client) Tasks(ctx context.Context) ([]Task, error) {
	var out []Task
	err := c.do(ctx, http.MethodGet, "/v1/tasks", nil, &out)
	return out, err
}

// EndTask ends the task with this id (its pseudonym). An unknown id is an
// *Error with Code CodeNotFound.
func (c *Client) EndTask(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/tasks/"+url.PathEscape(id), nil, nil)
}
