//go:build linux

package uffd

import (
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
)

// socketPair returns two connected unix stream sockets.
func socketPair(t *testing.T) (vmm, pager *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "sock")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

func TestRecvHandshake(t *testing.T) {
	requireUFFD(t)
	const valid = `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]`
	openFDs := func(t *testing.T) (uffdFD, otherFD int) {
		u, err := Open(NonBlocking)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Close() })
		f, err := os.Open("/dev/null")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return u.FD(), int(f.Fd())
	}
	for _, tc := range []struct {
		name    string
		send    func(t *testing.T, c *net.UnixConn, u, other int)
		wantErr string
	}{
		{"valid", func(t *testing.T, c *net.UnixConn, u, _ int) { SendRaw(c, []byte(valid), u) }, ""},
		{"split across two writes", func(t *testing.T, c *net.UnixConn, u, _ int) {
			SendRaw(c, []byte(valid[:20]), u)
			time.Sleep(10 * time.Millisecond)
			SendRaw(c, []byte(valid[20:]))
		}, ""},
		{"no descriptor", func(t *testing.T, c *net.UnixConn, _, _ int) { SendRaw(c, []byte(valid)) }, "no userfaultfd attached"},
		{"two descriptors", func(t *testing.T, c *net.UnixConn, u, o int) { SendRaw(c, []byte(valid), u, o) }, "2 descriptors"},
		{"not a userfaultfd", func(t *testing.T, c *net.UnixConn, _, o int) { SendRaw(c, []byte(valid), o) }, "not a userfaultfd"},
		{"garbage", func(t *testing.T, c *net.UnixConn, u, _ int) { SendRaw(c, []byte("GET / HTTP/1.0\r\n\r\n"), u) }, "want a JSON array"},
		{"closed early", func(t *testing.T, c *net.UnixConn, u, _ int) { SendRaw(c, []byte(valid[:10]), u); c.Close() }, "peer closed"},
		{"silent peer", func(t *testing.T, c *net.UnixConn, _, _ int) {}, "deadline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vmm, pager := socketPair(t)
			u, other := openFDs(t)
			pager.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			go tc.send(t, vmm, u, other)
			hs, err := RecvHandshake(pager, 1<<20)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				defer hs.UFFD.Close()
				if len(hs.Mappings) != 1 || hs.Peer.Pid != int32(os.Getpid()) || !IsUserfaultfd(hs.UFFD.FD()) {
					t.Fatalf("handshake %+v", hs)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
			if tc.name != "silent peer" && !errdefs.IsInvalidArgument(err) {
				t.Fatalf("err %v is not ErrInvalidArgument", err)
			}
		})
	}
}

func TestPidfd(t *testing.T) {
	fd, err := OpenPidfd(os.Getpid())
	if err != nil {
		t.Skipf("pidfd_open unavailable: %v", err)
	}
	defer unix.Close(fd)
	if exited, err := PidfdExited(fd); err != nil || exited {
		t.Fatalf("own pidfd: exited=%v err=%v", exited, err)
	}
}
