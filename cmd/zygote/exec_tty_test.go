package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/instances/instancestest"
)

type ptyOutput struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (o *ptyOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

func (o *ptyOutput) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		o.mu.Lock()
		got := o.b.String()
		o.mu.Unlock()
		if strings.Contains(got, s) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("terminal output %q never contained %q", got, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// `zygote exec -it` on a real pseudo-terminal: the guest terminal starts
// at this terminal's size and follows SIGWINCH; this terminal is raw while
// the command runs (^C reaches the guest as a byte, not as SIGINT here)
// and restored afterwards.
func TestExecInteractiveTTY(t *testing.T) {
	h := instancestest.New(t, "", instancestest.Clone)
	ts := httptest.NewServer(api.NewServer(api.ServerConfig{Manager: h.M}).Handler())
	defer ts.Close()
	c, _ := client.New(ts.URL, "")
	ctx := context.Background()
	if _, err := c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "web", Size: "64MB"}); err != nil {
		t.Fatal(err)
	}
	h.WaitState("web", instances.StateRunning)

	master, slave, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	defer master.Close()
	defer slave.Close()
	if err := pty.Setsize(master, &pty.Winsize{Rows: 33, Cols: 99}); err != nil {
		t.Fatal(err)
	}
	before, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	cmd := exec.Command(self, "exec", "-it", "web", "--", "tty-echo")
	cmd.Env = append(os.Environ(), "ZYGOTE_TEST_CLI=1", "ZYGOTE_ENDPOINT="+ts.URL)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()
	out := &ptyOutput{}
	go io.Copy(out, master)

	out.waitFor(t, "33 99\r\n")
	raw, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if raw.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != 0 {
		t.Errorf("terminal not raw while the command runs: lflag %#x", raw.Lflag)
	}
	if err := pty.Setsize(master, &pty.Winsize{Rows: 40, Cols: 120}); err != nil { // the kernel sends SIGWINCH
		t.Fatal(err)
	}
	out.waitFor(t, "40 120\r\n")
	master.Write([]byte("a\x03b"))
	out.waitFor(t, "a\x03b") // echoed by the guest: ^C went through as a byte
	master.Write([]byte("q"))
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		if err != nil {
			t.Fatalf("zygote exec -it exited with %v; output %q", err, out.b.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("zygote exec -it did not exit after the command did")
	}
	after, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if *after != *before {
		t.Errorf("terminal not restored: lflag %#x, was %#x", after.Lflag, before.Lflag)
	}
}
