package smallflow

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

func TestLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, ln, Size) }()

	c := Client{Addr: ln.Addr().String(), Concurrency: 4, Duration: 200 * time.Millisecond}
	r, err := c.Run(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if r.Connections == 0 || r.Errors != 0 {
		t.Errorf("result %+v, want connections and no errors", r)
	}
	if r.P50Ms <= 0 || r.P99Ms < r.P50Ms {
		t.Errorf("latencies p50 %v ms, p99 %v ms", r.P50Ms, r.P99Ms)
	}

	cancel()
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Errorf("Serve returned %v, want context.Canceled", err)
	}
}

func TestErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: every dial fails
	c := Client{Addr: addr, Concurrency: 2, Duration: 50 * time.Millisecond}
	r, err := c.Run(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if r.Connections != 0 || r.Errors == 0 || r.FirstError == "" {
		t.Errorf("result %+v, want only errors", r)
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	for _, tc := range []struct {
		in   []time.Duration
		p    int
		want time.Duration
	}{
		{nil, 50, 0},
		{d[:1], 99, 1},
		{d, 50, 50},
		{d, 99, 99},
		{d, 100, 100},
		{d[:10], 99, 10},
		{d[:10], 50, 5},
	} {
		if got := Percentile(tc.in, tc.p); got != tc.want {
			t.Errorf("percentile(%d values, %d) = %v, want %v", len(tc.in), tc.p, got, tc.want)
		}
	}
}
