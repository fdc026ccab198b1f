package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/agent6/agent6/internal/sdnotify"
	"github.com/agent6/agent6/node/config"
	"github.com/agent6/agent6/node/localapi"
)

// runUp runs the sidecar. It prints "agent6 ready: …" on stdout, and
// tells systemd READY=1 (Type=notify), once the node is up and the
// LocalAPI serves; STOPPING=1 when it begins to shut down.
func runUp(args []string, stdout io.Writer) error {
	fs := newFlags("up", "[--config FILE]")
	cfgPath := fs.String("config", "/etc/agent6/agent6.yaml", "configuration file (YAML)")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	if fi, err := os.Stat(cfg.KeyFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("key file is readable by others; chmod 600 it", "path", cfg.KeyFile, "mode", fi.Mode().Perm())
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// What can fail is checked before the host changes: the socket here
	// (another agent6 serves it?), then the UDP port, the TUN name and the
	// overlay route in Up. A second agent6 started by mistake fails
	// without touching the first.
	ln, err := localapi.ListenGroup(cfg.LocalAPI, cfg.LocalAPIGID)
	if err != nil {
		return err
	}
	n := cfg.Node(log)
	if err := n.Up(ctx); err != nil {
		ln.Close() // removes the socket: ours
		return err
	}
	defer n.Close()
	srv := &localapi.Server{Node: n, Logger: log}
	if cfg.AdminGID >= 0 {
		srv.AdminGroups = []uint32{uint32(cfg.AdminGID)}
	}
	log.Info("sidecar up", "addr", n.Addr(), "tun", cfg.TUN, "localapi", cfg.LocalAPI)
	// The socket listens already: a client connecting from now on is
	// answered once Serve accepts it.
	fmt.Fprintf(stdout, "agent6 ready: %s on %s, LocalAPI %s\n", n.Addr(), cfg.TUN, cfg.LocalAPI)
	if _, err := sdnotify.Notify(sdnotify.Ready); err != nil {
		log.Warn("cannot tell systemd we are ready", "err", err)
	}
	err = srv.Serve(ctx, ln)
	sdnotify.Notify(sdnotify.Stopping)
	log.Info("shutting down")
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("localapi: %w", err)
	}
	return nil
}
