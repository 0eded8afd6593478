//go:build linux

package uffd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
)

// Handshake is what a VMM hands the pager when it connects.
type Handshake struct {
	Mappings []Mapping
	// UFFD is the descriptor received with SCM_RIGHTS; the receiver owns it.
	UFFD *Userfaultfd
	// Peer identifies the connecting process (SO_PEERCRED, in the
	// receiver's pid namespace).
	Peer unix.Ucred
}

// RecvHandshake reads Firecracker's handshake from conn: one message whose
// bytes are a JSON array of Mappings and whose ancillary data carries
// exactly one userfaultfd. The peer keeps the connection open afterwards, so
// the message ends where the JSON value ends. Bound the wait with
// conn.SetReadDeadline. fileSize is passed to ParseMappings.
//
// Every protocol error wraps errdefs.ErrInvalidArgument; on any error every
// received descriptor is closed.
func RecvHandshake(conn *net.UnixConn, fileSize int64) (Handshake, error) {
	cred, err := PeerCred(conn)
	if err != nil {
		return Handshake{}, err
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return Handshake{}, fmt.Errorf("uffd: handshake: %w", err)
	}
	var (
		body []byte
		fds  []int
	)
	closeFDs := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for !json.Valid(body) {
		var (
			n, oobn, flags int
			rerr           error
		)
		err := raw.Read(func(fd uintptr) bool {
			n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_CMSG_CLOEXEC)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if oobn > 0 {
			got, perr := parseRights(oob[:oobn])
			fds = append(fds, got...)
			if perr != nil && err == nil {
				err = perr
			}
		}
		if err == nil && flags&unix.MSG_CTRUNC != 0 {
			err = invalid("more descriptors than the one userfaultfd")
		}
		if err == nil && n == 0 {
			err = invalid("peer closed the connection after %d bytes, before a complete JSON array", len(body))
		}
		if err != nil {
			closeFDs()
			if errors.Is(err, errdefs.ErrInvalidArgument) {
				return Handshake{}, err
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return Handshake{}, fmt.Errorf("uffd: handshake: no complete JSON array before the deadline (%d bytes so far): %w", len(body), err)
			}
			return Handshake{}, fmt.Errorf("uffd: handshake: read after %d bytes: %w", len(body), err)
		}
		body = append(body, buf[:n]...)
		if len(body) > MaxHandshakeBytes {
			closeFDs()
			return Handshake{}, invalid("message longer than %d bytes", MaxHandshakeBytes)
		}
		if t := bytes.TrimLeft(body, " \t\r\n"); len(t) > 0 && t[0] != '[' {
			break // not a JSON array; ParseMappings says why
		}
	}
	ms, err := ParseMappings(body, fileSize)
	if err == nil {
		switch {
		case len(fds) == 0:
			err = invalid("no userfaultfd attached (want one SCM_RIGHTS descriptor)")
		case len(fds) > 1:
			err = invalid("%d descriptors attached, want one userfaultfd", len(fds))
		case !IsUserfaultfd(fds[0]):
			err = invalid("the attached descriptor is not a userfaultfd")
		}
	}
	if err != nil {
		closeFDs()
		return Handshake{}, err
	}
	return Handshake{Mappings: ms, UFFD: FromFD(fds[0]), Peer: cred}, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, invalid("ancillary data: %v", err)
	}
	var fds []int
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			return fds, invalid("SCM_RIGHTS: %v", err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// SendHandshake plays the VMM's side: one sendmsg with the JSON array of
// mappings and uffdFD as SCM_RIGHTS. The mappings are sent as given, so a
// caller can emit page_size or the older page_size_kib.
func SendHandshake(conn *net.UnixConn, mappings []Mapping, uffdFD int) error {
	body, err := json.Marshal(mappings)
	if err != nil {
		return fmt.Errorf("uffd: handshake: encode: %w", err)
	}
	return SendRaw(conn, body, uffdFD)
}

// SendRaw sends body with fds attached in one message; tests use it to send
// malformed handshakes.
func SendRaw(conn *net.UnixConn, body []byte, fds ...int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, oobn, err := conn.WriteMsgUnix(body, oob, nil)
	if err != nil {
		return fmt.Errorf("uffd: handshake: send: %w", err)
	}
	if n != len(body) || oobn != len(oob) {
		return fmt.Errorf("uffd: handshake: short send (%d/%d bytes, %d/%d ancillary)", n, len(body), oobn, len(oob))
	}
	return nil
}

// PeerCred returns the credentials of the process at the other end of a
// connected unix socket (SO_PEERCRED).
func PeerCred(conn *net.UnixConn) (unix.Ucred, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return unix.Ucred{}, fmt.Errorf("uffd: peer credentials: %w", err)
	}
	var (
		cred *unix.Ucred
		cerr error
	)
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return unix.Ucred{}, fmt.Errorf("uffd: peer credentials: %w", err)
	}
	if cerr != nil {
		return unix.Ucred{}, fmt.Errorf("uffd: peer credentials: %w", cerr)
	}
	return *cred, nil
}

// OpenPidfd opens a non-blocking pidfd for pid. It becomes readable when
// the process exits; poll it next to the uffd because a VM's exit is
// invisible on the uffd itself.
func OpenPidfd(pid int) (int, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return -1, fmt.Errorf("uffd: pidfd_open(%d): %w", pid, err)
	}
	unix.CloseOnExec(fd)
	return fd, nil
}

// PidfdExited reports, without blocking, whether the pidfd's process has
// exited.
func PidfdExited(pidfd int) (bool, error) {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("uffd: poll pidfd: %w", err)
		}
		return n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0, nil
	}
}

// IsPeerGone reports whether err from Copy, Zeropage, Wake or Continue
// means the registered process or its mapping is gone.
func IsPeerGone(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ESRCH)
}
