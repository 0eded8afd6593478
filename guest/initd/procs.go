package initd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// procTable starts processes and collects their exit status.
//
// As PID 1 (reapAll) it is the only caller of wait4 in the process: it reaps
// every child, including orphans re-parented to init, and hands statuses
// of the processes it started to their waiters. Starting and registering a
// process happen under mu, and so does reaping, so a child that exits at
// once cannot be reaped before it is registered. os/exec is not used for
// that reason: its Wait would race with the reaper.
//
// Outside PID 1 (tests, a development agent) each started process gets its
// own wait4(pid) goroutine and nothing else is reaped.
type procTable struct {
	reapAll bool

	mu    sync.Mutex
	procs map[int]*proc // started and not yet reaped
}

// proc is a started process.
type proc struct {
	pid  int
	done chan struct{}
	ws   syscall.WaitStatus // valid after done is closed
}

func newProcTable(reapAll bool) *procTable {
	return &procTable{reapAll: reapAll, procs: make(map[int]*proc)}
}

// start forks and execs argv[0] (already resolved to a path).
func (t *procTable) start(path string, argv []string, attr *syscall.ProcAttr) (*proc, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pid, err := syscall.ForkExec(path, argv, attr)
	if err != nil {
		return nil, err
	}
	p := &proc{pid: pid, done: make(chan struct{})}
	t.procs[pid] = p
	if t.reapAll {
		return p, nil
	}
	go func() {
		for {
			_, err := syscall.Wait4(pid, &p.ws, 0, nil)
			if !errors.Is(err, syscall.EINTR) {
				break
			}
		}
		t.mu.Lock()
		delete(t.procs, pid)
		t.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// reapLoop reaps children on SIGCHLD (and once a second, in case a signal
// was coalesced away) until ctx ends. Only for reapAll tables.
func (t *procTable) reapLoop(ctx context.Context) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGCHLD)
	defer signal.Stop(ch)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		t.reap()
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-tick.C:
		}
	}
}

// reap collects every exited child and reports whether no child is left
// at all (wait4 says ECHILD).
func (t *procTable) reap() (none bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return errors.Is(err, syscall.ECHILD)
		}
		if p, ok := t.procs[pid]; ok {
			delete(t.procs, pid)
			p.ws = ws
			close(p.done)
		}
	}
}

// waitAll waits until every process is gone (as PID 1: every child,
// orphans included; otherwise: every process this table started), or the
// timeout passed. It reports whether all are gone.
func (t *procTable) waitAll(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		var gone bool
		if t.reapAll {
			gone = t.reap()
		} else {
			t.mu.Lock()
			gone = len(t.procs) == 0
			t.mu.Unlock()
		}
		if gone {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// exitCode converts a wait status to a shell-style exit code.
func exitCode(ws syscall.WaitStatus) (code int, sig string) {
	switch {
	case ws.Exited():
		return ws.ExitStatus(), ""
	case ws.Signaled():
		return 128 + int(ws.Signal()), ws.Signal().String()
	}
	return 255, ""
}

// lookPath resolves file against the PATH in env (not the agent's own).
func lookPath(file string, env []string) (string, error) {
	if file == "" {
		return "", errors.New("empty command")
	}
	if strings.Contains(file, "/") {
		if err := executable(file); err != nil {
			return "", err
		}
		return file, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := dir + "/" + file
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", file, errNotFound)
}

func executable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("%s: is a directory", p)
	}
	if st.Mode()&0o111 == 0 {
		return fmt.Errorf("%s: permission denied", p)
	}
	return nil
}
