package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/agent6/agent6/node/localapi"
)

func runCapture(args []string, stdout io.Writer) error {
	fs := newFlags("capture", "-o FILE [--peer ADDR] [--duration D] [--socket PATH]")
	out := fs.String("o", "", "pcap `FILE` to write; - for standard output (to pipe into tshark -r -)")
	peer := fs.String("peer", "", "only the packets to or from this overlay address")
	duration := fs.Duration("duration", 0, "stop after this long (default: at SIGINT)")
	socket := socketFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("%w: -o FILE is required", errUsage)
	}
	var addr netip.Addr
	if *peer != "" {
		a, err := netip.ParseAddr(*peer)
		if err != nil {
			return fmt.Errorf("%w: --peer %q is not an IPv6 address", errUsage, *peer)
		}
		addr = a
	}
	if *duration < 0 {
		return fmt.Errorf("%w: --duration %v is negative", errUsage, *duration)
	}
	w := stdout
	if *out != "-" {
		// The packets are plaintext: the file is the owner's alone.
		f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	st, err := (&localapi.Client{Socket: *socket}).Capture(ctx, w, addr, *duration)
	if err != nil {
		return err
	}
	if f, ok := w.(*os.File); ok && *out != "-" {
		if err := f.Close(); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "agent6 capture: %d packets (%d bytes), %d dropped\n", st.Packets, st.Bytes, st.Dropped)
	return nil
}
