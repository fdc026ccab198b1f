// Command smallflow measures short TCP connections: with -listen it serves,
// answering each connection's request of -size bytes with as many bytes and
// closing; with -connect it opens a new connection per request, -c at a time,
// for -d, and prints a JSON smallflow.Result.
//
//	smallflow -listen :9000
//	smallflow -connect '[2001:20::1]:9000' -c 16 -d 5s
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/agent6/agent6/bench/smallflow"
)

func main() {
	listen := flag.String("listen", "", "serve on this TCP `address`")
	connect := flag.String("connect", "", "measure against the server at this TCP `address`")
	conc := flag.Int("c", 16, "connections in flight")
	dur := flag.Duration("d", 5*time.Second, "how long to start new connections")
	size := flag.Int("size", smallflow.Size, "request and response size in bytes")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *listen, *connect, *conc, *dur, *size); err != nil {
		fmt.Fprintln(os.Stderr, "smallflow:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, listen, connect string, conc int, dur time.Duration, size int) error {
	switch {
	case (listen == "") == (connect == ""):
		return fmt.Errorf("want exactly one of -listen and -connect")
	case size <= 0:
		return fmt.Errorf("-size %d, want > 0", size)
	case listen != "":
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return err
		}
		fmt.Println("listening on", ln.Addr())
		if err := smallflow.Serve(ctx, ln, size); ctx.Err() == nil {
			return err
		}
		return nil
	default:
		c := smallflow.Client{Addr: connect, Concurrency: conc, Duration: dur, Size: size}
		r, err := c.Run(ctx)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(r)
	}
}
