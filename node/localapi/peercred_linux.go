package localapi

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// peerCred reads the credentials of the process that connected c, a unix
// socket: SO_PEERCRED's pid, uid and gid, and SO_PEERGROUPS' supplementary
// groups.
func peerCred(c net.Conn) (Caller, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return Caller{}, fmt.Errorf("localapi: %T is not a socket", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return Caller{}, err
	}
	var cr *unix.Ucred
	var groups []uint32
	var cerr error
	err = raw.Control(func(fd uintptr) {
		cr, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if cerr == nil {
			groups = peerGroups(int(fd))
		}
	})
	if err = errors.Join(err, cerr); err != nil {
		return Caller{}, fmt.Errorf("localapi: SO_PEERCRED: %w", err)
	}
	return Caller{PID: cr.Pid, UID: cr.Uid, GID: cr.Gid, Groups: groups}, nil
}

// maxGroups is the kernel's NGROUPS_MAX.
const maxGroups = 65536

// peerGroups returns the supplementary groups of the process that
// connected fd, or nil where the kernel cannot tell (before Linux 4.13).
func peerGroups(fd int) []uint32 {
	buf := make([]uint32, 32)
	for {
		size := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == unix.ERANGE && size/4 > uint32(len(buf)) && size/4 <= maxGroups:
			buf = make([]uint32, size/4) // size is what the kernel needs
		case errno != 0:
			return nil
		default:
			return buf[:size/4]
		}
	}
}
