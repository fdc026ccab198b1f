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

	"github.com/agent6/agent6/node/config"
	"github.com/agent6/agent6/node/localapi"
)

func runUp(args []string, stdout io.Writer) error {
	fs := newFlags("up", "--config FILE")
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

	n := cfg.Node(log)
	if err := n.Up(ctx); err != nil {
		return err
	}
	defer n.Close()
	ln, err := localapi.Listen(cfg.LocalAPI)
	if err != nil {
		return err
	}
	srv := &localapi.Server{Node: n, Logger: log}
	log.Info("sidecar up", "addr", n.Addr(), "tun", cfg.TUN, "localapi", cfg.LocalAPI)
	err = srv.Serve(ctx, ln)
	log.Info("shutting down")
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("localapi: %w", err)
	}
	return nil
}
