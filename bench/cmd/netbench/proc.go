package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/agent6/agent6/internal/netns"
)

// proc is a long-running program inside a namespace, logging to a file.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	ctx     context.Context // done when the program is to stop
	cancel  context.CancelFunc
	done    chan struct{} // closed once cmd has exited and err is set
	err     error         // cmd.Wait's result
}

// startProc starts prog with args inside ns, its output going to
// logDir/name.log. The program gets SIGTERM when ctx is done or Stop is
// called.
func startProc(ctx context.Context, ns *netns.NS, logDir, name string, env []string, prog string, args ...string) (*proc, error) {
	logPath := filepath.Join(logDir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	cmd := ns.Command(ctx, prog, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		cancel()
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, logPath: logPath, cmd: cmd, ctx: ctx, cancel: cancel, done: make(chan struct{})}
	go p.wait(logf)
	return p, nil
}

// wait reaps the program; startProc starts it, Stop waits for it.
func (p *proc) wait(logf *os.File) {
	p.err = p.cmd.Wait()
	logf.Close()
	close(p.done)
}

// pid is the program's process ID.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the program has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM, then SIGKILL after netns.StopDelay, and waits for the
// program to exit. It returns an error if the program had exited before it
// was told to stop, or did not exit on SIGTERM.
func (p *proc) Stop() error {
	early := p.exited() && p.ctx.Err() == nil
	p.cancel()
	<-p.done
	switch {
	case early:
		return fmt.Errorf("%s had exited early: %v", p.name, p.err)
	case errors.Is(p.err, exec.ErrWaitDelay):
		return fmt.Errorf("%s ignored SIGTERM and was killed", p.name)
	}
	return nil
}

// logTail returns the end of the program's log, for error messages.
func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	b = bytes.TrimSpace(b)
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	return string(b)
}

// poll calls ready every 100ms until it succeeds, timeout passes or ctx is
// done. If p is not nil and exits meanwhile, poll fails at once.
func poll(ctx context.Context, timeout time.Duration, what string, p *proc, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := ready(ctx)
		if err == nil {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s: %s exited (%v); %s:\n%s", what, p.name, p.err, p.logPath, p.logTail())
		}
		select {
		case <-ctx.Done():
			msg := fmt.Sprintf("%s: not ready after %v: %v", what, timeout, err)
			if p != nil {
				msg += fmt.Sprintf("; %s:\n%s", p.logPath, p.logTail())
			}
			return errors.New(msg)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// listening reports whether something listens on TCP port inside ns.
func listening(ns *netns.NS, port int) func(context.Context) error {
	return func(ctx context.Context) error {
		out, err := ns.Run(ctx, "ss", "-Hltn", "sport = :"+strconv.Itoa(port))
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(out)) == 0 {
			return fmt.Errorf("nothing listens on port %d in %s", port, ns.Name)
		}
		return nil
	}
}

// pings reports whether from reaches addr with one ping.
func pings(from *netns.NS, addr string) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := from.Run(ctx, "ping", "-c1", "-W1", addr)
		return err
	}
}

// cpuSeconds returns the user plus system CPU time of the processes, from
// /proc/PID/stat.
func cpuSeconds(pids []int) (float64, error) {
	const userHZ = 100 // clock ticks per second in /proc, fixed by the Linux ABI
	var ticks int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, err
		}
		// Fields after the command name, which is in parentheses and may hold
		// spaces: state is field 3, utime 14 and stime 15.
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		if i < 0 || len(f) < 13 {
			return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
		}
		for _, s := range f[11:13] {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
			}
			ticks += n
		}
	}
	return float64(ticks) / userHZ, nil
}

// peakRSS returns the largest VmHWM among the processes, in bytes.
func peakRSS(pids []int) (int64, error) {
	var peak int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return 0, err
		}
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("/proc/%d/status: VmHWM: %w", pid, err)
				}
				peak = max(peak, kb*1024)
			}
		}
	}
	return peak, nil
}
