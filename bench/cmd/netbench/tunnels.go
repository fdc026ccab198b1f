package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/agent6/agent6/internal/netns"
)

// A tunnel is one path from namespace A to namespace B that the benchmark
// measures.
type tunnel struct {
	key    string     // one of tunnelKeys
	target netip.Addr // B's address over this path
	procs  []*proc    // the tunnel's processes, whose CPU and memory count
}

// pids returns the process IDs of the tunnel's processes.
func (t *tunnel) pids() []int {
	var pids []int
	for _, p := range t.procs {
		pids = append(pids, p.pid())
	}
	return pids
}

// tunnelKeys are the tunnels in the order they are reported.
var tunnelKeys = []string{"raw", "wireguard-go", "agent6"}

// tunnelLabels are the tunnels' column headings.
var tunnelLabels = map[string]string{"raw": "raw veth", "wireguard-go": "wireguard-go", "agent6": "agent6"}

// readyTimeout bounds how long a tunnel may take to come up.
const readyTimeout = 30 * time.Second

// side names the two namespaces in file and interface names.
var sides = [2]string{"a", "b"}

// setupTunnel brings up the tunnel named key between the pair's namespaces.
func (b *bench) setupTunnel(ctx context.Context, key string) (*tunnel, error) {
	switch key {
	case "raw":
		return &tunnel{key: key, target: b.pair.B.Addr}, nil
	case "wireguard-go":
		return b.setupWireGuard(ctx)
	case "agent6":
		return b.setupAgent6(ctx)
	}
	return nil, fmt.Errorf("unknown tunnel %q", key)
}

// wgOverlay are the overlay addresses of A and B over plain wireguard-go.
var wgOverlay = [2]netip.Addr{netip.MustParseAddr("fd00:a6::1"), netip.MustParseAddr("fd00:a6::2")}

const (
	wgPort     = 51820
	agent6Port = 51821
)

// setupWireGuard runs the reference wireguard-go in each namespace and
// configures it with wg(8) and ip(8).
func (b *bench) setupWireGuard(ctx context.Context) (*tunnel, error) {
	t := &tunnel{key: "wireguard-go", target: wgOverlay[1]}
	ns := [2]*netns.NS{b.pair.A, b.pair.B}
	var ifname, keyFile, pub [2]string
	for i, s := range sides {
		// The UAPI socket, /var/run/wireguard/NAME.sock, is not per
		// namespace, so the names differ by side and by run.
		ifname[i] = fmt.Sprintf("a6wg%d%s", os.Getpid()%1000000, s)
		keyFile[i] = filepath.Join(b.tmp, "wg-"+s+".key")
		priv, err := b.hostOutput(ctx, "", "wg", "genkey")
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(keyFile[i], []byte(priv+"\n"), 0o600); err != nil {
			return nil, err
		}
		if pub[i], err = b.hostOutput(ctx, priv, "wg", "pubkey"); err != nil {
			return nil, err
		}
	}
	for i, s := range sides {
		p, err := b.start(ctx, ns[i], "wireguard-go-"+s, nil, b.binPath("wireguard-go"), "-f", ifname[i])
		if err != nil {
			return nil, err
		}
		t.procs = append(t.procs, p)
		sock := "/var/run/wireguard/" + ifname[i] + ".sock"
		if err := poll(ctx, readyTimeout, "wireguard-go "+s, p, func(context.Context) error {
			_, err := os.Stat(sock)
			return err
		}); err != nil {
			return nil, err
		}
	}
	for i := range sides {
		peer := 1 - i
		steps := [][]string{
			{"wg", "set", ifname[i], "private-key", keyFile[i], "listen-port", strconv.Itoa(wgPort),
				"peer", pub[peer], "allowed-ips", wgOverlay[peer].String() + "/128",
				"endpoint", netip.AddrPortFrom(ns[peer].Addr, wgPort).String()},
			{"ip", "addr", "add", wgOverlay[i].String() + "/64", "dev", ifname[i]},
			{"ip", "link", "set", ifname[i], "mtu", strconv.Itoa(b.mtu), "up"},
		}
		for _, step := range steps {
			if _, err := ns[i].Run(ctx, step[0], step[1:]...); err != nil {
				return nil, err
			}
		}
	}
	if err := poll(ctx, readyTimeout, "wireguard-go tunnel", t.procs[0], pings(b.pair.A, t.target.String())); err != nil {
		return nil, err
	}
	return t, nil
}

// agent6Config is the sidecar's configuration file; see cmd/agent6.
const agent6Config = `key: %q
listen_port: %d
tun: agent6
mtu: %d
localapi: %q
peers:
  - public_key: %q
    endpoint: %q
`

// setupAgent6 runs the agent6 sidecar in each namespace, each with the
// other as its one peer.
func (b *bench) setupAgent6(ctx context.Context) (*tunnel, error) {
	t := &tunnel{key: "agent6"}
	ns := [2]*netns.NS{b.pair.A, b.pair.B}
	agent6 := b.binPath("agent6")
	var keyFile, pub, sock [2]string
	var addr [2]netip.Addr
	for i, s := range sides {
		keyFile[i] = filepath.Join(b.tmp, "agent6-"+s+".key")
		sock[i] = filepath.Join(b.tmp, "agent6-"+s+".sock")
		if _, err := b.hostOutput(ctx, "", agent6, "keygen", "--out", keyFile[i]); err != nil {
			return nil, err
		}
		var err error
		if pub[i], err = b.hostOutput(ctx, "", agent6, "pubkey", "--key", keyFile[i]); err != nil {
			return nil, err
		}
		out, err := b.hostOutput(ctx, "", agent6, "addr", "--key", keyFile[i])
		if err != nil {
			return nil, err
		}
		if addr[i], err = netip.ParseAddr(out); err != nil {
			return nil, fmt.Errorf("agent6 addr: %w", err)
		}
	}
	t.target = addr[1]
	for i, s := range sides {
		peer := 1 - i
		conf := filepath.Join(b.tmp, "agent6-"+s+".yaml")
		text := fmt.Sprintf(agent6Config, keyFile[i], agent6Port, b.mtu, sock[i],
			pub[peer], netip.AddrPortFrom(ns[peer].Addr, agent6Port).String())
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			return nil, err
		}
		p, err := b.start(ctx, ns[i], "agent6-"+s, nil, agent6, "up", "--config", conf)
		if err != nil {
			return nil, err
		}
		t.procs = append(t.procs, p)
	}
	for i, s := range sides {
		if err := poll(ctx, readyTimeout, "agent6 "+s, t.procs[i], func(ctx context.Context) error {
			_, err := b.hostOutput(ctx, "", agent6, "status", "--json", "--socket", sock[i])
			return err
		}); err != nil {
			return nil, err
		}
	}
	if err := poll(ctx, readyTimeout, "agent6 tunnel", t.procs[0], pings(b.pair.A, t.target.String())); err != nil {
		return nil, err
	}
	return t, nil
}

// hostOutput runs a short command outside the namespaces, stdin its input,
// and returns its trimmed standard output.
func (b *bench) hostOutput(ctx context.Context, stdin, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return "", fmt.Errorf("%s %s: %w", filepath.Base(name), strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}
