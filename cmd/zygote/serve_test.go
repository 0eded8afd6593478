package main

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/guest/guesttest"
)

// startServe runs `zygote serve` with args (plus a private data directory,
// socket and cache) and returns its socket and a function that stops it
// and returns serve's error.
func startServe(t *testing.T, args ...string) (dataDir, socket string, wait func() error, stop func() error) {
	t.Helper()
	guesttest.QEMU(t) // serve checks `qemu-system-x86_64 --version`
	dir := t.TempDir()
	dataDir, socket = filepath.Join(dir, "data"), filepath.Join(dir, "zygote.sock")
	root := newRootCmd()
	root.SetArgs(append([]string{"serve", "--data-dir", dataDir, "--socket", socket,
		"--cache-dir", filepath.Join(dir, "cache"), "--log-level", "warn"}, args...))
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	var result error
	go func() { // owner: this test; stop ends it
		defer close(finished)
		result = root.ExecuteContext(ctx)
	}()
	wait = func() error { <-finished; return result }
	stop = func() error { cancel(); return wait() }
	t.Cleanup(func() { stop() })
	return dataDir, socket, wait, stop
}

// waitHealthy polls /health until it answers, or serve returns.
func waitHealthy(t *testing.T, socket string, served <-chan error) {
	t.Helper()
	c, err := client.New(socket, "")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Health(ctx)
		cancel()
		if err == nil {
			return
		}
		select {
		case err := <-served:
			t.Fatalf("serve returned before it answered /health: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no /health answer on %s: %v", socket, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServeWithoutPager: no VM uses the pager, so serve does not start it
// unless asked, and a pager binary that cannot run does not stop the
// daemon. In this test binary `<exe> pager` exits at once (TestMain).
func TestServeWithoutPager(t *testing.T) {
	dataDir, socket, wait, stop := startServe(t)
	served := make(chan error, 1)
	go func() { served <- wait() }()
	waitHealthy(t, socket, served)
	if _, err := os.Stat(filepath.Join(dataDir, "pager")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("serve without --pager made the pager's state directory (stat: %v)", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind after shutdown (stat: %v)", err)
	}
}

// TestServePagerOptIn: --pager starts and supervises it, so a pager that
// cannot run is a clear startup error.
func TestServePagerOptIn(t *testing.T) {
	_, _, wait, _ := startServe(t, "--pager")
	err := wait()
	if err == nil || !strings.Contains(err.Error(), "pager") {
		t.Fatalf("serve --pager with a pager that cannot run: err = %v, want a pager error", err)
	}
}

// TestServeCutsOffSilentClients: the daemon's servers have a header
// timeout, so a client that connects and never sends a request does not
// hold a connection (and a goroutine) forever.
func TestServeCutsOffSilentClients(t *testing.T) {
	saved := defaultHTTPTimeouts
	defaultHTTPTimeouts.ReadHeader = 300 * time.Millisecond
	t.Cleanup(func() { defaultHTTPTimeouts = saved })
	_, socket, wait, _ := startServe(t)
	served := make(chan error, 1)
	go func() { served <- wait() }()
	waitHealthy(t, socket, served)

	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	begin := time.Now()
	_, err = io.ReadAll(conn) // returns when the server closes
	if err != nil {
		t.Fatalf("a silent connection was not closed by the server: %v", err)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Fatalf("closed after %v, want about the 300ms header timeout", d)
	}
}
