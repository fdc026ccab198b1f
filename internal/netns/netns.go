// Package netns builds throwaway network topologies out of Linux network
// namespaces and veth pairs, for integration tests and benchmarks.
//
// It owns the namespaces it creates and nothing else: every namespace is named
// "<prefix>-<pid>-<seq>-<role>", so parallel runs do not collide, and Close
// kills what still runs inside and deletes it. The work is done by iproute2
// (the ip command), which needs root; Available says whether it can run here,
// and why not, so tests can skip:
//
//	if err := netns.Available(); err != nil {
//		t.Skip(err)
//	}
//	p, err := netns.NewPair(ctx, "a6t")
//	...
//	defer p.Close()
//	out, err := p.A.Run(ctx, "ping", "-c1", p.B.Addr.String())
package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// StopDelay is how long a process started by Command has to exit after
// SIGTERM, once its context is done, before it is killed.
const StopDelay = 5 * time.Second

// closeTimeout bounds the ip commands Close runs.
const closeTimeout = 15 * time.Second

// NS is a network namespace created by this package.
//
// Its methods are safe for concurrent use.
type NS struct {
	// Name is the namespace's name under /run/netns, as `ip netns` knows it.
	Name string
	// Link is the underlay interface inside the namespace, or "" if none.
	Link string
	// Addr is the IPv4 underlay address on Link, or the zero Addr.
	Addr netip.Addr

	closed atomic.Bool

	mu      sync.Mutex
	started []*exec.Cmd // by Command, for Close to kill
}

// seq numbers the namespaces of this process, so names stay unique.
var seq atomic.Uint64

// newNS creates a namespace named "<prefix>-<pid>-<seq>-<role>" with its
// loopback up.
func newNS(ctx context.Context, prefix, role string) (*NS, error) {
	name := fmt.Sprintf("%s-%d-%d-%s", prefix, os.Getpid(), seq.Add(1), role)
	if _, err := ip(ctx, "netns", "add", name); err != nil {
		return nil, err
	}
	ns := &NS{Name: name}
	if _, err := ip(ctx, "-n", name, "link", "set", "lo", "up"); err != nil {
		return nil, errors.Join(err, ns.Close())
	}
	return ns, nil
}

// Command returns a command that runs name with args inside the namespace,
// through `ip netns exec`, which execs the program: the PID of the started
// command is the program's own. When ctx is done the program receives SIGTERM,
// and SIGKILL StopDelay later if it has not exited (exec.Cmd's Cancel and
// WaitDelay, which the caller may change before Start). Close kills it too,
// even if it has not entered the namespace yet; start it before Close, or
// from the goroutine that calls Close.
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = StopDelay
	ns.mu.Lock()
	ns.started = append(ns.started, cmd)
	ns.mu.Unlock()
	return cmd
}

// Run runs name with args inside the namespace until it exits or ctx is done,
// and returns its combined stdout and stderr. A failure's error holds the
// command line and the output's last line.
func (ns *NS) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := ns.Command(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("netns: %s: %s %s: %w%s", ns.Name, name, strings.Join(args, " "), err, lastLine(out))
	}
	return out, nil
}

// Sysctl sets the sysctl key (e.g. "net.ipv4.tcp_tw_reuse") inside the
// namespace. It needs the sysctl command.
func (ns *NS) Sysctl(ctx context.Context, key, value string) error {
	_, err := ns.Run(ctx, "sysctl", "-q", "-w", key+"="+value)
	return err
}

// PIDs returns the processes running inside the namespace.
func (ns *NS) PIDs(ctx context.Context) ([]int, error) {
	out, err := ip(ctx, "netns", "pids", ns.Name)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("netns: %s: bad pid %q from ip netns pids", ns.Name, f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// Close kills, by PID, every process still inside the namespace and every
// one started by Command, then deletes the namespace, which destroys its
// interfaces. It waits for both. A second Close returns an error wrapping
// net.ErrClosed.
func (ns *NS) Close() error {
	if ns.closed.Swap(true) {
		return fmt.Errorf("netns: %s: %w", ns.Name, net.ErrClosed)
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	ns.killStarted()
	var errs []error
	if err := ns.kill(ctx); err != nil {
		errs = append(errs, err)
	}
	if _, err := ip(ctx, "netns", "delete", ns.Name); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// killStarted sends SIGKILL to the processes Command started. One may not
// be inside yet: `ip netns exec` that has opened the namespace but not
// entered it is not among its PIDs, and would run its program in the
// namespace after Close deleted it. os.Process refuses to signal a process
// that has been waited for, so a PID that was reused is never hit.
func (ns *NS) killStarted() {
	ns.mu.Lock()
	started := ns.started
	ns.started = nil
	ns.mu.Unlock()
	for _, cmd := range started {
		if cmd.Process != nil {
			_ = cmd.Process.Kill() // os.ErrProcessDone when it has exited
		}
	}
}

// kill sends SIGKILL to the processes inside the namespace and waits until
// none is left.
func (ns *NS) kill(ctx context.Context) error {
	for {
		pids, err := ns.PIDs(ctx)
		if err != nil || len(pids) == 0 {
			return err
		}
		for _, pid := range pids {
			// ESRCH means it is already gone; anything else shows in the next round.
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("netns: %s: processes %v still running: %w", ns.Name, pids, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ip runs the ip command in the caller's namespace.
func ip(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("netns: ip %s: %w%s", strings.Join(args, " "), err, lastLine(out.Bytes()))
	}
	return out.Bytes(), nil
}

// lastLine formats the last non-empty line of a command's output for an
// error message.
func lastLine(out []byte) string {
	s := strings.TrimSpace(string(out))
	if s == "" {
		return ""
	}
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return ": " + s
}

// Available reports why this package cannot build namespaces here, or nil if
// it can: it needs Linux, root, the ip command, and a kernel that lets it add
// a namespace. The answer is computed once.
func Available() error { return available() }

var available = sync.OnceValue(func() error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("netns: network namespaces need Linux, not %s", runtime.GOOS)
	}
	if euid := os.Geteuid(); euid != 0 {
		return fmt.Errorf("netns: network namespaces need root (euid is %d)", euid)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("netns: no ip command (iproute2): %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	ns, err := newNS(ctx, "netns-probe", "x")
	if err != nil {
		return fmt.Errorf("netns: cannot create a network namespace: %w", err)
	}
	return ns.Close()
})
