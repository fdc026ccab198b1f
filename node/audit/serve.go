package audit

import (
	"context"
	"errors"
	"io/fs"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/transparency-dev/tessera/api/layout"
)

// Authorizer decides whether the agent at peer (the request's source
// overlay address; the zero Addr when the request did not come over IP,
// e.g. on a unix socket) may read the log. It must be safe for concurrent
// use and must not block long: it runs on every request.
type Authorizer func(peer netip.Addr) bool

// AllowAll is an Authorizer for a transport that has authorised its
// callers already, such as the LocalAPI's unix socket.
func AllowAll(netip.Addr) bool { return true }

// serveCounters count what the handler refused.
type serveCounters struct {
	served, forbidden, notFound, badRequest atomic.Uint64
}

// ServeStats are the tlog-tiles handler's counters.
type ServeStats struct {
	Served     uint64 `json:"served"`
	Forbidden  uint64 `json:"forbidden"`   // the Authorizer said no
	NotFound   uint64 `json:"not_found"`   // no such tile, bundle or path
	BadRequest uint64 `json:"bad_request"` // a method other than GET or HEAD
}

// Handler serves the log over the C2SP tlog-tiles HTTP API: GET
// /checkpoint (with the cosignatures the log holds for it),
// /tile/<L>/<N>[.p/<W>] and /tile/entries/<N>[.p/<W>], so any standard
// client can read it. Every request first passes authorize (nil refuses
// all); a refusal is 403 Forbidden. Phase 2 serves it on TCP port 7948 of
// the node's overlay address, authorised by policy.
func (l *Log) Handler(authorize Authorizer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.serve(w, r, authorize)
	})
}

// ServeStats returns the handler's counters.
func (l *Log) ServeStats() ServeStats {
	return ServeStats{
		Served: l.served.served.Load(), Forbidden: l.served.forbidden.Load(),
		NotFound: l.served.notFound.Load(), BadRequest: l.served.badRequest.Load(),
	}
}

func (l *Log) serve(w http.ResponseWriter, r *http.Request, authorize Authorizer) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		l.served.badRequest.Add(1)
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	var peer netip.Addr
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		peer = ap.Addr().Unmap()
	}
	if authorize == nil || !authorize(peer) {
		l.served.forbidden.Add(1)
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	ctx := r.Context()
	path := strings.TrimPrefix(r.URL.Path, "/")
	var body []byte
	var err error
	immutable := false
	switch {
	case path == layout.CheckpointPath:
		body, err = l.servedCheckpoint(ctx)
	case strings.HasPrefix(path, "tile/entries/"):
		var idx uint64
		var p uint8
		if idx, p, err = layout.ParseTileIndexPartial(strings.TrimPrefix(path, "tile/entries/")); err == nil {
			body, err = l.reader.ReadEntryBundle(ctx, idx, p)
			immutable = p == 0
		}
	case strings.HasPrefix(path, "tile/"):
		level, index, ok := strings.Cut(strings.TrimPrefix(path, "tile/"), "/")
		if !ok {
			err = fs.ErrNotExist
			break
		}
		var lv, idx uint64
		var p uint8
		if lv, idx, p, err = layout.ParseTileLevelIndexPartial(level, index); err == nil {
			body, err = l.reader.ReadTile(ctx, lv, idx, p)
			immutable = p == 0
		}
	default:
		err = fs.ErrNotExist
	}
	if err != nil {
		l.served.notFound.Add(1)
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	l.served.served.Add(1)
	if immutable {
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		w.Header().Set("Cache-Control", "no-cache")
	}
	if path == layout.CheckpointPath {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	} else {
		w.Header().Set("Content-Type", "application/octet-stream")
	}
	w.Write(body)
}

// servedCheckpoint is the latest checkpoint with the cosignatures the log
// holds for it.
func (l *Log) servedCheckpoint(ctx context.Context) ([]byte, error) {
	raw, err := l.reader.ReadCheckpoint(ctx)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, err
	}
	return l.withCosignatures(raw), nil
}
