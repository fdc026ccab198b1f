package sdnotify_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/agent6/agent6/internal/sdnotify"
)

// listen opens a datagram socket as systemd does and points
// NOTIFY_SOCKET at it.
func listen(t *testing.T, name, env string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", env)
	return c
}

func read(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestNotify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	c := listen(t, path, path)
	for _, state := range []string{sdnotify.Ready, sdnotify.Stopping} {
		if sent, err := sdnotify.Notify(state); !sent || err != nil {
			t.Fatalf("Notify(%q) = %v, %v", state, sent, err)
		}
		if got := read(t, c); got != state {
			t.Fatalf("systemd read %q, want %q", got, state)
		}
	}
}

func TestNotifyAbstract(t *testing.T) {
	name := fmt.Sprintf("agent6-sdnotify-test-%d", os.Getpid())
	c := listen(t, "@"+name, "@"+name) // Go maps a leading @ to the abstract namespace too
	if sent, err := sdnotify.Notify(sdnotify.Ready); !sent || err != nil {
		t.Fatalf("Notify = %v, %v", sent, err)
	}
	if got := read(t, c); got != sdnotify.Ready {
		t.Fatalf("systemd read %q", got)
	}
}

func TestNotifyWithoutSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := sdnotify.Notify(sdnotify.Ready); sent || err != nil {
		t.Fatalf("Notify without NOTIFY_SOCKET = %v, %v; want false, nil", sent, err)
	}
	t.Setenv("NOTIFY_SOCKET", "relative")
	if _, err := sdnotify.Notify(sdnotify.Ready); err == nil {
		t.Fatal("a relative NOTIFY_SOCKET was accepted")
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "absent"))
	if _, err := sdnotify.Notify(sdnotify.Ready); err == nil {
		t.Fatal("an absent socket was not reported")
	}
}
