// Package smallflow measures how fast a path carries many short TCP
// connections: each connection sends a small request, reads an equally small
// response, and ends. It is the connection-setup half of a benchmark that
// iperf3's bulk streams leave out.
//
// Serve answers on a listener; Client.Run dials it at a fixed concurrency for
// a fixed time. The server closes each connection first, so its TIME_WAIT
// state lands on the server and the client does not run out of ports.
package smallflow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"
)

// Size is the default request and response size.
const Size = 1024

// connTimeout bounds each connection, on both sides.
const connTimeout = 10 * time.Second

// Serve accepts connections on ln until ctx is done or ln fails. For each
// connection it reads size bytes, writes size bytes and closes. It closes ln
// and waits for its connections before it returns; after ctx is done it
// returns ctx's error.
func Serve(ctx context.Context, ln net.Listener, size int) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("smallflow: accept: %w", err)
		}
		wg.Go(func() { serveConn(c, size) })
	}
}

// serveConn answers one connection. A failed connection is the client's to
// count, so errors are dropped here.
func serveConn(c net.Conn, size int) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(connTimeout))
	buf := make([]byte, size)
	if _, err := io.ReadFull(c, buf); err != nil {
		return
	}
	c.Write(buf)
}

// Client dials a smallflow server. The zero value of each field but Addr
// means its default. Fields must not change once Run has started.
type Client struct {
	// Addr is the server's host:port.
	Addr string
	// Concurrency is the number of connections kept in flight; default 16.
	Concurrency int
	// Duration is how long new connections are started; default 5s.
	Duration time.Duration
	// Size is the request and response size; default Size.
	Size int
}

// Result is what Client.Run measured. Latency runs from the start of the
// dial to the server's close of the connection; only successful connections
// count towards it and towards Connections.
type Result struct {
	Connections int     `json:"connections"`
	Errors      int     `json:"errors"`
	Seconds     float64 `json:"seconds"`
	ConnsPerSec float64 `json:"conns_per_sec"`
	P50Ms       float64 `json:"p50_ms"`
	P99Ms       float64 `json:"p99_ms"`
	// FirstError is the first failure seen, if any.
	FirstError string `json:"first_error,omitempty"`
}

// Run opens connections, Concurrency at a time, until Duration has passed
// or ctx is done, then waits for those in flight. It fails only if ctx ends
// the run early; a failed connection counts in Result.Errors.
func (c *Client) Run(ctx context.Context) (Result, error) {
	conc := orDefault(c.Concurrency, 16)
	dur := orDefault(c.Duration, 5*time.Second)
	size := orDefault(c.Size, Size)

	start := time.Now()
	deadline := start.Add(dur)
	workers := make([]worker, conc)
	var wg sync.WaitGroup
	for i := range workers {
		w := &workers[i]
		wg.Go(func() { w.run(ctx, c.Addr, size, deadline) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("smallflow: run cut short: %w", err)
	}

	var r Result
	var lat []time.Duration
	for _, w := range workers {
		lat = append(lat, w.lat...)
		r.Errors += w.errors
		if r.FirstError == "" && w.firstErr != nil {
			r.FirstError = w.firstErr.Error()
		}
	}
	slices.Sort(lat)
	r.Connections = len(lat)
	r.Seconds = elapsed.Seconds()
	r.ConnsPerSec = float64(len(lat)) / elapsed.Seconds()
	r.P50Ms = ms(Percentile(lat, 50))
	r.P99Ms = ms(Percentile(lat, 99))
	return r, nil
}

// worker runs connections one after another; only its own goroutine
// touches it until Run's WaitGroup is done.
type worker struct {
	lat      []time.Duration
	errors   int
	firstErr error
}

func (w *worker) run(ctx context.Context, addr string, size int, deadline time.Time) {
	req := make([]byte, size)
	resp := make([]byte, size)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		t0 := time.Now()
		if err := RoundTrip(ctx, (&net.Dialer{}).DialContext, addr, req, resp, nil); err != nil {
			w.errors++
			if w.firstErr == nil {
				w.firstErr = err
			}
			continue
		}
		w.lat = append(w.lat, time.Since(t0))
	}
}

// DialFunc opens a connection (net.Dialer.DialContext, node.Node.Dial,
// node.Task.Dial).
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// RoundTrip runs one small flow over a connection from dial: write req,
// read len(resp) bytes, then wait for the server's close. check, if set,
// vets the connection before anything is sent.
func RoundTrip(ctx context.Context, dial DialFunc, addr string, req, resp []byte, check func(net.Conn) error) error {
	ctx, cancel := context.WithTimeout(ctx, connTimeout)
	defer cancel()
	conn, err := dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if check != nil {
		if err := check(conn); err != nil {
			return err
		}
	}
	dl, _ := ctx.Deadline()
	conn.SetDeadline(dl)
	if _, err := conn.Write(req); err != nil {
		return err
	}
	if _, err := io.ReadFull(conn, resp); err != nil {
		return err
	}
	var one [1]byte
	if n, err := conn.Read(one[:]); n > 0 || !errors.Is(err, io.EOF) {
		return fmt.Errorf("smallflow: want EOF after %d-byte response, got %d more bytes, %v", len(resp), n, err)
	}
	return nil
}

// Percentile returns the nearest-rank p-th percentile of sorted, or 0.
func Percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100 // ceil(n*p/100), 1-based rank
	return sorted[max(i, 1)-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// orDefault returns v, or def if v is zero or negative.
func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}
