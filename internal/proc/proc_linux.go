// Package proc identifies processes across daemon restarts and watches
// processes that are not our children.
//
// A pid alone is not an identity: after a VMM exits its pid can be reused.
// (pid, start time) is: the start time, in clock ticks since boot, comes
// from /proc/<pid>/stat and differs for any reused pid.
package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
)

// StartTime returns the start time of pid in clock ticks since boot.
func StartTime(pid int) (uint64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("process %d: %w", pid, errdefs.ErrNotFound)
		}
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: fields
	// after it start behind the last ')'.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	fields := strings.Fields(string(raw[i+1:]))
	// fields[0] is field 3 (state); start time is field 22.
	const startField = 22 - 3
	if len(fields) <= startField {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(fields))
	}
	return strconv.ParseUint(fields[startField], 10, 64)
}

// Zombie reports whether pid has exited but not been reaped.
func zombie(pid int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(raw, ')')
	return i >= 0 && i+2 < len(raw) && raw[i+2] == 'Z'
}

// Cmdline returns the argv of pid.
func Cmdline(pid int) ([]string, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("process %d: %w", pid, errdefs.ErrNotFound)
		}
		return nil, err
	}
	raw = bytes.TrimRight(raw, "\x00")
	if len(raw) == 0 {
		return nil, nil
	}
	return strings.Split(string(raw), "\x00"), nil
}

// Alive reports whether the process (pid, start) still runs (zombies count
// as gone).
func Alive(pid int, start uint64) bool {
	got, err := StartTime(pid)
	return err == nil && got == start && !zombie(pid)
}

// Handle is a pidfd for a process whose identity was checked.
type Handle struct {
	fd  int
	pid int
}

// Open opens a pidfd for (pid, start). It fails with errdefs.ErrNotFound
// if the process is gone or the pid now names another process. The identity
// is checked after the pidfd is open, so the pidfd cannot refer to a process
// that reused the pid.
func Open(pid int, start uint64) (*Handle, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("process %d: %w", pid, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	if !Alive(pid, start) {
		unix.Close(fd)
		return nil, fmt.Errorf("process %d (start %d): %w", pid, start, errdefs.ErrNotFound)
	}
	return &Handle{fd: fd, pid: pid}, nil
}

// PID returns the process id.
func (h *Handle) PID() int { return h.pid }

// Signal sends sig through the pidfd (no pid-reuse race).
func (h *Handle) Signal(sig syscall.Signal) error {
	err := unix.PidfdSendSignal(h.fd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// Wait blocks until the process exits or ctx ends. It works for processes
// that are not children of this one (adopted VMMs).
func (h *Handle) Wait(ctx context.Context) error {
	for {
		fds := []unix.PollFd{{Fd: int32(h.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 200)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("poll pidfd %d: %w", h.pid, err)
		}
		if n > 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// Exited reports, without blocking, whether the process has exited.
func (h *Handle) Exited() bool {
	fds := []unix.PollFd{{Fd: int32(h.fd), Events: unix.POLLIN}}
	n, _ := unix.Poll(fds, 0)
	return n > 0
}

// Close releases the pidfd.
func (h *Handle) Close() error { return unix.Close(h.fd) }

// Terminate sends SIGTERM, waits up to grace, then SIGKILLs and waits.
func (h *Handle) Terminate(ctx context.Context, grace time.Duration) error {
	if h.Exited() {
		return nil
	}
	_ = h.Signal(syscall.SIGTERM)
	wctx, cancel := context.WithTimeout(ctx, grace)
	err := h.Wait(wctx)
	cancel()
	if err == nil {
		return nil
	}
	if err := h.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %d: %w", h.pid, err)
	}
	return h.Wait(ctx)
}

// Find returns the pids of processes whose argv contains every one of the
// given arguments exactly.
func Find(args ...string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		argv, err := Cmdline(pid)
		if err != nil {
			continue
		}
		if containsAll(argv, args) {
			out = append(out, pid)
		}
	}
	return out, nil
}

func containsAll(argv, want []string) bool {
	for _, w := range want {
		found := false
		for _, a := range argv {
			if a == w {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
