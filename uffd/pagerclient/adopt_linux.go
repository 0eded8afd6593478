//go:build linux

package pagerclient

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/uffd"
)

// adopt watches a pager this process did not start (it cannot wait(2) for
// it): a pidfd in the runtime's poller becomes readable when it exits.
func adopt(pid int) (*proc, error) {
	fd, err := uffd.OpenPidfd(pid)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	p := &proc{pid: pid, adopted: true, exited: make(chan struct{})}
	p.signal = func(sig syscall.Signal) error {
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = unix.PidfdSendSignal(int(fd), sig, nil, 0) }); err != nil {
			return err
		}
		return serr
	}
	p.release = sync.OnceFunc(func() { f.Close() })
	// The watcher: it ends when the pager exits or release closes the pidfd.
	go func() {
		err := rc.Read(func(fd uintptr) bool {
			exited, err := uffd.PidfdExited(int(fd))
			return exited || err != nil
		})
		if err != nil {
			return // released: no longer watching
		}
		p.exitErr = errors.New("exited (adopted: exit status unknown)")
		close(p.exited)
	}()
	return p, nil
}
