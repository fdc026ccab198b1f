//go:build !linux

package localapi

import (
	"errors"
	"net"
)

// peerCred is only implemented on Linux; elsewhere callers are unknown,
// and may only read.
func peerCred(net.Conn) (Caller, error) {
	return Caller{}, errors.New("localapi: caller credentials are only read on Linux")
}
