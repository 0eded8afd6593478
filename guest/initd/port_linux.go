package initd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// VirtioPort is a virtio-serial port inside the guest, opened once for both
// directions (the driver allows one open at a time).
//
// The fd is non-blocking and lives in Go's poller, so Close interrupts a
// pending Read or Write. The driver's semantics: Read returns 0 (io.EOF)
// at once while no host is connected; Write cannot proceed (EAGAIN, the
// poller waits) while no host is connected or the queue is full. The
// driver reports the host's absence as POLLHUP, permanently, and wakes its
// wait queue when the host connects, so WaitHost sleeps on its own
// edge-triggered epoll instance and rechecks POLLHUP after each wakeup; it
// never spins.
type VirtioPort struct {
	path      string
	f         *os.File // non-blocking, in Go's poller
	fd, ep    int
	closeOnce sync.Once
}

// FindVirtioPort waits until a virtio-serial port named name exists and
// returns its device path (/dev/vportNpM).
func FindVirtioPort(ctx context.Context, name string) (string, error) {
	for {
		dirs, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, d := range dirs {
			b, err := os.ReadFile(d)
			if err == nil && strings.TrimSpace(string(b)) == name {
				dev := "/dev/" + filepath.Base(filepath.Dir(d))
				if _, err := os.Stat(dev); err == nil {
					return dev, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("virtio-serial port %q did not appear (is virtio_console loaded, and does QEMU have -device virtserialport,name=%s?): %w", name, name, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// OpenVirtioPort opens the port device.
func OpenVirtioPort(path string) (*VirtioPort, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLET, Fd: int32(fd)}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(ep)
		unix.Close(fd)
		return nil, fmt.Errorf("epoll_ctl %s: %w", path, err)
	}
	return &VirtioPort{path: path, f: os.NewFile(uintptr(fd), path), fd: fd, ep: ep}, nil
}

// Path returns the device path.
func (p *VirtioPort) Path() string { return p.path }

func (p *VirtioPort) Read(b []byte) (int, error) { return p.f.Read(b) }

func (p *VirtioPort) Write(b []byte) (int, error) { return p.f.Write(b) }

// hostConnected reports whether a host is connected (no POLLHUP).
func (p *VirtioPort) hostConnected() bool {
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && (n == 0 || fds[0].Revents&unix.POLLHUP == 0)
}

// WaitHost blocks until a host is connected or ctx ends.
func (p *VirtioPort) WaitHost(ctx context.Context) error {
	events := make([]unix.EpollEvent, 4)
	for !p.hostConnected() {
		if err := ctx.Err(); err != nil {
			return err
		}
		// A wakeup of the port's wait queue (the host connected, or data
		// arrived) ends the wait; the timeout only bounds how late ctx is
		// noticed.
		if _, err := unix.EpollWait(p.ep, events, 1000); err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("epoll_wait %s: %w", p.path, err)
		}
	}
	return nil
}

// Close closes the port; a pending Read or Write returns an error.
func (p *VirtioPort) Close() error {
	p.closeOnce.Do(func() {
		unix.Close(p.ep)
		p.f.Close()
	})
	return nil
}
