package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/agent6/agent6/internal/netns"
	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/localapi"
)

// taskHelperEnv makes TestTaskHelper, run as a child process inside a
// namespace, play one side of TestSidecarTaskNetns:
//
//	serve ADDRPORT SOCKET  a TCP service on ADDRPORT that answers each
//	                       caller with who it is, asked of the LocalAPI at
//	                       SOCKET: "task=ADDR class=CLASS owner=SPIFFE-ID"
//	call FROM TO           connect from address FROM to TO and print
//	                       "reply: " and what the service said
const taskHelperEnv = "AGENT6_TEST_TASK_HELPER"

func TestTaskHelper(t *testing.T) {
	f := strings.Fields(os.Getenv(taskHelperEnv))
	switch {
	case len(f) == 3 && f[0] == "serve":
		ln, err := net.Listen("tcp6", f[1])
		if err != nil {
			t.Fatal(err)
		}
		fmt.Println("listening")
		c := &localapi.Client{Socket: f[2]}
		for {
			conn, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			caller := conn.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			who, err := c.WhoIs(ctx, caller)
			cancel()
			switch {
			case err != nil:
				fmt.Fprintf(conn, "error: %v", err)
			case who.Task == nil:
				fmt.Fprintf(conn, "agent=%s owner=%s", who.Addr, who.ID)
			default:
				fmt.Fprintf(conn, "task=%s class=%s owner=%s", who.Addr, who.Task.Class, who.ID)
			}
			conn.Close()
		}
	case len(f) == 3 && f[0] == "call":
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(f[1])}, Timeout: 10 * time.Second}
		conn, err := d.Dial("tcp6", f[2])
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(conn)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("reply: %s\n", b)
	default:
		t.Skip("helper process for TestSidecarTaskNetns")
	}
}

// taskHelper returns the command that runs TestTaskHelper in ns.
func taskHelper(t *testing.T, ctx context.Context, ns *netns.NS, args ...string) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(ctx, self, "-test.run=^TestTaskHelper$")
	cmd.Env = append(os.Environ(), taskHelperEnv+"="+strings.Join(args, " "))
	return cmd
}

// TestSidecarTaskNetns: a runtime in namespace A starts a task through
// `agent6 task start` and calls, from the task's address, a service in
// namespace B bound on B's overlay address. The service asks its own
// LocalAPI who called: the task's class and its owner's SPIFFE ID. When the
// task ends, B forgets it.
func TestSidecarTaskNetns(t *testing.T) {
	requireNetns(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := buildAgent6(t)
	pair, err := netns.NewPair(ctx, "a6k")
	if err != nil {
		t.Fatal(err)
	}
	defer pair.Close()
	cars, _ := orgSidecars(t, bin, []*netns.NS{pair.A, pair.B}, []string{"planner", "tool"})
	a, b := cars[0], cars[1]

	// B's service, on B's overlay address.
	service := netip.AddrPortFrom(b.addr, 8080).String()
	srv := taskHelper(t, ctx, pair.B, "serve", service, b.socket)
	stdout, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var srvErr strings.Builder
	srv.Stderr = &srvErr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }() // by PID
	lines := bufio.NewScanner(stdout)
	for lines.Scan() && lines.Text() != "listening" {
	}
	if lines.Err() != nil || lines.Text() != "listening" {
		t.Fatalf("service in %s did not start: %v\n%s", pair.B.Name, lines.Err(), srvErr.String())
	}
	go io.Copy(io.Discard, stdout)

	// The runtime in A: a task, as a shell script would start it.
	out, err := pair.A.Run(ctx, bin, "task", "start", "--class", "tool-call", "--sensitivity", "low", "--ttl", "5m", "--json", "--socket", a.socket)
	if err != nil {
		t.Fatalf("task start: %v\n%s", err, out)
	}
	var task localapi.Task
	if err := json.Unmarshal(out, &task); err != nil || !task.Addr.IsValid() || task.Depth != 1 {
		t.Fatalf("task start --json: %v\n%s", err, out)
	}
	if out, err := pair.A.Run(ctx, "ip", "-6", "addr", "show", "dev", "agent6"); err != nil || !strings.Contains(string(out), task.Addr.String()+"/128") {
		t.Fatalf("task address not on A's TUN: %v\n%s", err, out)
	}

	// It calls B's service from the task address.
	out, err = taskHelper(t, ctx, pair.A, "call", task.Addr.String(), service).CombinedOutput()
	if err != nil {
		t.Fatalf("call from the task: %v\n%s", err, out)
	}
	want := fmt.Sprintf("reply: task=%s class=tool-call owner=spiffe://example.org/agent/planner", task.Addr)
	if !strings.Contains(string(out), want+"\n") {
		t.Fatalf("the service answered:\n%s\nwant %q", out, want)
	}
	var who node.WhoIsResult
	if err := json.Unmarshal([]byte(cli(t, bin, "whois", "--json", task.Addr.String(), "--socket", b.socket)), &who); err != nil ||
		who.Task == nil || who.Task.Pseudonym != task.ID || who.Task.Owner != a.addr || who.Task.Sensitivity != "low" {
		t.Fatalf("whois at b: %+v, %v", who, err)
	}

	// Ended in A, the task is forgotten in B.
	if out, err := pair.A.Run(ctx, bin, "task", "end", task.ID, "--socket", a.socket); err != nil {
		t.Fatalf("task end: %v\n%s", err, out)
	}
	if out := cli(t, bin, "task", "list", "--json", "--socket", a.socket); out != "[]" {
		t.Errorf("task list after end: %s", out)
	}
	if out, err := pair.A.Run(ctx, "ip", "-6", "addr", "show", "dev", "agent6"); err != nil || strings.Contains(string(out), task.Addr.String()) {
		t.Errorf("task address still on A's TUN: %v\n%s", err, out)
	}
	took := eventually(t, 5*time.Second, "b forgetting the ended task", func() bool {
		out, err := exec.Command(bin, "whois", task.Addr.String(), "--socket", b.socket).CombinedOutput()
		var exit *exec.ExitError
		return errors.As(err, &exit) && strings.Contains(string(out), localapi.CodeNotFound)
	})
	t.Logf("task forgotten by the peer %v after it ended", took.Round(time.Millisecond))
	// And the address is gone: nothing calls from it any more.
	if out, err := taskHelper(t, ctx, pair.A, "call", task.Addr.String(), service).CombinedOutput(); err == nil {
		t.Errorf("call from the ended task's address succeeded:\n%s", out)
	}
	a.stop(t)
	b.stop(t)
}
