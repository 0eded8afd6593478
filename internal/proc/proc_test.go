package proc

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/zygote/zygote/errdefs"
)

func TestIdentityAndWaitOfNonChildView(t *testing.T) {
	cmd := exec.Command("sh", "-c", "read line", "zygote-proc-test-marker")
	stdin, err := cmd.StdinPipe() // never written: sh blocks in read, with no child
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })

	start, err := StartTime(cmd.Process.Pid)
	if err != nil || start == 0 {
		t.Fatalf("StartTime = %d, %v", start, err)
	}
	if !Alive(cmd.Process.Pid, start) {
		t.Fatal("Alive = false for a live process")
	}
	if Alive(cmd.Process.Pid, start+1) {
		t.Fatal("Alive = true for the wrong start time (a reused pid)")
	}
	if _, err := Open(cmd.Process.Pid, start+1); !errdefs.IsNotFound(err) {
		t.Fatalf("Open with wrong start time: %v, want NotFound", err)
	}
	// Until the child has exec'd, its cmdline is still this test's: wait.
	var pids []int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		pids, err = Find("zygote-proc-test-marker")
		if err != nil || len(pids) > 0 || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || len(pids) != 1 || pids[0] != cmd.Process.Pid {
		t.Fatalf("Find = %v, %v", pids, err)
	}
	h, err := Open(cmd.Process.Pid, start)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if h.Exited() {
		t.Fatal("Exited = true for a live process")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	if err := h.Wait(ctx); err == nil {
		t.Fatal("Wait returned nil before the process exited")
	}
	cancel()
	if err := h.Terminate(context.Background(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	<-done
	if Alive(cmd.Process.Pid, start) {
		t.Fatal("Alive after Terminate")
	}
}

func TestStartTimeOfSelfAndMissing(t *testing.T) {
	if _, err := StartTime(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if _, err := StartTime(1 << 30); !errdefs.IsNotFound(err) {
		t.Fatalf("StartTime of a missing pid: %v, want NotFound", err)
	}
}
