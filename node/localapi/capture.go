package localapi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
)

// GET /v1/capture?peer=ADDR&duration=D streams a pcap (LINKTYPE_RAW) of
// the overlay packets entering and leaving WireGuard until the duration
// passes or the client goes away; peer keeps only those to or from one
// overlay address. When the stream ends on its own, the trailers
// Agent6-Capture-Packets and Agent6-Capture-Dropped say what it wrote and
// what it dropped because the client read too slowly. A capture shows
// every local agent's traffic in the clear, so it needs what revocations
// need: root, the node's user, or a member of an admin group.

// maxCaptureDuration bounds the duration parameter.
const maxCaptureDuration = 24 * time.Hour

const (
	trailerPackets = "Agent6-Capture-Packets"
	trailerDropped = "Agent6-Capture-Dropped"
)

func (s *Server) capture(w http.ResponseWriter, r *http.Request) {
	if !s.mayWrite(w, r, s.admin, "root or a member of the LocalAPI's admin group (a capture shows every agent's traffic)") {
		return
	}
	q := r.URL.Query()
	if !s.params(w, q, "peer", "duration") {
		return
	}
	var peer netip.Addr
	if raw := q.Get("peer"); raw != "" {
		a, err := netip.ParseAddr(raw)
		if err != nil || !identity.IsOverlay(a) {
			s.badRequest(w, fmt.Sprintf("peer %q is not an overlay address", raw))
			return
		}
		peer = a
	}
	ctx := r.Context()
	if raw := q.Get("duration"); raw != "" {
		d, err := time.ParseDuration(raw)
		if err != nil || d <= 0 || d > maxCaptureDuration {
			s.badRequest(w, fmt.Sprintf("duration %q is not a duration between 0 and %v", raw, maxCaptureDuration))
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	if s.stopping != nil { // the server is shutting down: end the stream
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		defer context.AfterFunc(s.stopping, cancel)()
	}
	w.Header().Set("Content-Type", "application/vnd.tcpdump.pcap")
	w.Header().Set("Content-Disposition", `attachment; filename="agent6.pcap"`)
	w.Header().Set("Trailer", trailerPackets+", "+trailerDropped)
	w.WriteHeader(http.StatusOK)
	st, err := s.Node.Capture(ctx, flushWriter{w, http.NewResponseController(w)}, peer)
	w.Header().Set(trailerPackets, strconv.FormatUint(st.Packets, 10))
	w.Header().Set(trailerDropped, strconv.FormatUint(st.Dropped, 10))
	if err != nil && s.Logger != nil && ctx.Err() == nil {
		s.Logger.Warn("localapi: capture ended", "err", err)
	}
}

// flushWriter sends each write to the client at once: a capture is a
// stream, written in bursts.
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f flushWriter) Write(b []byte) (int, error) {
	n, err := f.w.Write(b)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

// Capture streams the node's packet capture (see GET /v1/capture) into w
// until ctx ends or duration (if not zero) passes. It writes whole pcap
// records only, so w holds a valid pcap file however the stream ends. The
// stats are what it wrote, and what the node dropped when the stream ran
// to its end.
func (c *Client) Capture(ctx context.Context, w io.Writer, peer netip.Addr, duration time.Duration) (node.CaptureStats, error) {
	var st node.CaptureStats
	v := url.Values{}
	if peer.IsValid() {
		v.Set("peer", peer.String())
	}
	if duration > 0 {
		v.Set("duration", duration.String())
	}
	path := "/v1/capture"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent6"+path, nil)
	if err != nil {
		return st, err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return st, fmt.Errorf("localapi: cannot reach agent6 at %s (is `agent6 up` running?): %w", c.Socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, responseError(path, resp)
	}
	var hdr [24]byte
	if _, err := io.ReadFull(resp.Body, hdr[:]); err != nil {
		if ctx.Err() != nil {
			return st, nil
		}
		return st, fmt.Errorf("localapi: %s: no pcap header: %w", path, err)
	}
	if _, err := w.Write(hdr[:]); err != nil {
		return st, err
	}
	rec := make([]byte, 16+65535)
	for {
		if _, err := io.ReadFull(resp.Body, rec[:16]); err != nil {
			if errors.Is(err, io.EOF) {
				st.Dropped, _ = strconv.ParseUint(resp.Trailer.Get(trailerDropped), 10, 64)
				return st, nil
			}
			if ctx.Err() != nil {
				return st, nil
			}
			return st, fmt.Errorf("localapi: %s: %w", path, err)
		}
		n := int(binary.LittleEndian.Uint32(rec[8:12]))
		if n > 65535 {
			return st, fmt.Errorf("localapi: %s: pcap record of %d bytes", path, n)
		}
		if _, err := io.ReadFull(resp.Body, rec[16:16+n]); err != nil {
			if ctx.Err() != nil {
				return st, nil // the record cut short is not written
			}
			return st, fmt.Errorf("localapi: %s: %w", path, err)
		}
		if _, err := w.Write(rec[:16+n]); err != nil {
			return st, err
		}
		st.Packets++
		st.Bytes += uint64(n)
	}
}
