package localapi

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"time"
)

// Caller is the process at the other end of a LocalAPI connection, as the
// kernel reports it when it connects (SO_PEERCRED, SO_PEERGROUPS).
type Caller struct {
	PID    int32
	UID    uint32
	GID    uint32   // its effective group
	Groups []uint32 // its supplementary groups (empty on kernels before 4.13)
}

type callerKey struct{}

// callerOf returns the caller that Serve attached to the request's
// connection, if any: a handler served any other way has none, and its
// writes are refused.
func callerOf(r *http.Request) (Caller, bool) {
	c, ok := r.Context().Value(callerKey{}).(Caller)
	return c, ok
}

// connContext attaches the connecting process's credentials to every
// request on the connection.
func (s *Server) connContext(ctx context.Context, c net.Conn) context.Context {
	cr, err := peerCred(c)
	if err != nil {
		if s.Logger != nil {
			s.Logger.Warn("localapi: caller credentials unavailable; the connection may only read", "err", err)
		}
		return ctx
	}
	return context.WithValue(ctx, callerKey{}, cr)
}

// selfUID is the user agent6 runs as: it holds the agent key, so its
// processes may do what root may.
var selfUID = uint32(os.Geteuid())

// privileged reports whether c may do anything: root, or the user the
// node runs as.
func privileged(c Caller) bool { return c.UID == 0 || c.UID == selfUID }

// admin reports whether c may make the admin writes (revocations): a
// privileged caller, or a member of one of the admin groups.
func (s *Server) admin(c Caller) bool {
	if privileged(c) || slices.Contains(s.AdminGroups, c.GID) {
		return true
	}
	for _, g := range c.Groups {
		if slices.Contains(s.AdminGroups, g) {
			return true
		}
	}
	return false
}

// mayWrite answers 403 and reports false unless the request's caller is
// known and allowed by ok.
func (s *Server) mayWrite(w http.ResponseWriter, r *http.Request, ok func(Caller) bool, need string) bool {
	c, known := callerOf(r)
	if known && ok(c) {
		return true
	}
	s.forbid(w, r, c, known, need)
	return false
}

// forbid answers a JSON 403, counts it and logs it (at most once every
// forbiddenLogEvery).
func (s *Server) forbid(w http.ResponseWriter, r *http.Request, c Caller, known bool, need string) {
	total := s.forbidden.Add(1)
	msg := fmt.Sprintf("%s %s needs %s", r.Method, r.URL.Path, need)
	if !known {
		msg += "; the caller's credentials are unknown"
	} else {
		msg += fmt.Sprintf("; the caller is uid %d, gid %d", c.UID, c.GID)
	}
	if s.Logger != nil {
		now := time.Now().UnixNano()
		last := s.lastForbiddenLog.Load()
		if now-last >= int64(forbiddenLogEvery) && s.lastForbiddenLog.CompareAndSwap(last, now) {
			s.Logger.Warn("localapi: forbidden", "method", r.Method, "path", r.URL.Path, "uid", c.UID, "gid", c.GID, "pid", c.PID, "total", total)
		}
	}
	writeError(w, http.StatusForbidden, CodeForbidden, msg)
}

// forbiddenLogEvery bounds how often refusals are logged: a caller that
// loops must not flood the log.
const forbiddenLogEvery = 10 * time.Second

// Forbidden returns how many requests were refused for their caller.
func (s *Server) Forbidden() uint64 { return s.forbidden.Load() }

// setOwner records that uid started the task at addr, and forgets the
// owners of tasks that have ended.
func (s *Server) setOwner(addr netip.Addr, uid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for a := range s.owners {
		if _, ok := s.Node.Task(a); !ok {
			delete(s.owners, a)
		}
	}
	if s.owners == nil {
		s.owners = make(map[netip.Addr]uint32)
	}
	s.owners[addr] = uid
}

// owner returns the uid that started the task at addr through the
// LocalAPI; false for a task started otherwise (by an embedding program).
func (s *Server) owner(addr netip.Addr) (uint32, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	uid, ok := s.owners[addr]
	return uid, ok
}

// ownerOrPrivileged allows the uid that started the task at addr, and
// privileged callers.
func (s *Server) ownerOrPrivileged(addr netip.Addr) func(Caller) bool {
	return func(c Caller) bool {
		if privileged(c) {
			return true
		}
		uid, ok := s.owner(addr)
		return ok && uid == c.UID
	}
}
