package netns_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/agent6/agent6/internal/netns"
)

func ExampleNewPair() {
	if err := netns.Available(); err != nil {
		log.Fatal(err) // a test would t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := netns.NewPair(ctx, "a6x")
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()

	// A long-running program in B: cancelling its context sends it SIGTERM,
	// then SIGKILL after netns.StopDelay. Close kills whatever is left.
	srvCtx, stop := context.WithCancel(ctx)
	srv := p.B.Command(srvCtx, "iperf3", "-s")
	if err := srv.Start(); err != nil {
		log.Fatal(err)
	}
	defer func() {
		stop()
		srv.Wait()
	}()

	out, err := p.A.Run(ctx, "ping", "-c1", p.B.Addr.String())
	fmt.Printf("%s %v\n", out, err)
}
