package initd

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zygote/zygote/guest/agentproto"
	"golang.org/x/sys/unix"
)

func TestLookPathUsesRequestPATH(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "mytool")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "noexec"), []byte("x"), 0o644)
	if p, err := lookPath("mytool", []string{"PATH=/nonexistent:" + dir}); err != nil || p != exe {
		t.Errorf("lookPath = %q, %v", p, err)
	}
	if _, err := lookPath("mytool", []string{"PATH=/usr/bin"}); err == nil {
		t.Error("found outside PATH")
	}
	if _, err := lookPath(filepath.Join(dir, "noexec"), nil); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("non-executable: %v", err)
	}
	if p, err := lookPath("sh", nil); err != nil || !strings.HasSuffix(p, "/sh") {
		t.Errorf("default PATH: %q %v", p, err)
	}
}

func TestMergeEnv(t *testing.T) {
	got := mergeEnv([]string{"PATH=/bin", "HOME=/root"}, map[string]string{"HOME": "/tmp", "A": "1"})
	if want := []string{"PATH=/bin", "A=1", "HOME=/tmp"}; !slices.Equal(got, want) {
		t.Errorf("mergeEnv = %v, want %v", got, want)
	}
}

func TestValidHostname(t *testing.T) {
	for _, h := range []string{"a", "web-2", "fork.example"} {
		if err := validHostname(h); err != nil {
			t.Errorf("%q: %v", h, err)
		}
	}
	for _, h := range []string{"", "-x", ".x", "a b", "a_b", strings.Repeat("a", 65)} {
		var pe *agentproto.Error
		if err := validHostname(h); !errors.As(err, &pe) || pe.Code != agentproto.CodeInvalidArgument {
			t.Errorf("%q accepted (%v)", h, err)
		}
	}
}

func TestExitCode(t *testing.T) {
	// A WaitStatus of exit 3, and of death by SIGKILL.
	if c, s := exitCode(syscall.WaitStatus(3 << 8)); c != 3 || s != "" {
		t.Errorf("exit 3 -> %d %q", c, s)
	}
	if c, s := exitCode(syscall.WaitStatus(syscall.SIGKILL)); c != 137 || s != "killed" {
		t.Errorf("SIGKILL -> %d %q", c, s)
	}
}

func devnull(t *testing.T) *os.File {
	f, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// As PID 1 the table reaps orphans too. The test process plays init by
// becoming a child subreaper, so the shell's background child is
// re-parented to it.
func TestProcTableReapsOrphans(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	pt := newProcTable(true)
	r, w, _ := os.Pipe()
	defer r.Close()
	null := devnull(t)
	p, err := pt.start("/bin/sh", []string{"sh", "-c", "sleep 0.2 & echo $!; exit 4"}, &syscall.ProcAttr{
		Files: []uintptr{null.Fd(), w.Fd(), null.Fd()},
	})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 32)
	n, _ := r.Read(buf)
	orphan, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		t.Fatalf("orphan pid %q", buf[:n])
	}
	// No reapLoop: drive reaping by hand until everything is gone.
	if !pt.waitAll(10 * time.Second) {
		t.Fatal("children not all reaped")
	}
	select {
	case <-p.done:
	default:
		t.Fatal("started process reaped but its waiter not told")
	}
	if c, _ := exitCode(p.ws); c != 4 {
		t.Errorf("exit code %d, want 4", c)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(orphan)); err == nil {
		t.Errorf("orphan %d still exists (zombie?)", orphan)
	}
}

func TestProcTablePerPidWait(t *testing.T) {
	pt := newProcTable(false)
	null := devnull(t)
	p, err := pt.start("/bin/sh", []string{"sh", "-c", "kill -9 $$"}, &syscall.ProcAttr{Files: []uintptr{null.Fd(), null.Fd(), null.Fd()}})
	if err != nil {
		t.Fatal(err)
	}
	<-p.done
	if c, sig := exitCode(p.ws); c != 137 || sig != "killed" {
		t.Errorf("got %d %q", c, sig)
	}
	if !pt.waitAll(time.Second) {
		t.Error("table not empty after exit")
	}
}
