// Package sdnotify tells systemd about a service's state: the sd_notify
// protocol, one datagram of "KEY=VALUE" lines to the unix socket named by
// $NOTIFY_SOCKET (sd_notify(3)). A service with Type=notify sends READY=1
// when it serves, and STOPPING=1 when it begins to shut down.
//
// It is written out rather than taken from github.com/coreos/go-systemd:
// the protocol is one sendto on a datagram socket, smaller than the
// dependency's entry in go.mod.
package sdnotify

import (
	"fmt"
	"net"
	"os"
)

// States to send.
const (
	Ready    = "READY=1"
	Stopping = "STOPPING=1"
)

// Notify sends state to the service manager. It reports false, nil when
// the process was not started by one ($NOTIFY_SOCKET unset), and an error
// when the socket is set but the datagram cannot be sent.
func Notify(state string) (bool, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return false, nil
	}
	if path[0] == '@' { // the abstract namespace
		path = "\x00" + path[1:]
	} else if path[0] != '/' {
		return false, fmt.Errorf("sdnotify: NOTIFY_SOCKET %q is neither a path nor an abstract socket", path)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("sdnotify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("sdnotify: %w", err)
	}
	return true, nil
}
