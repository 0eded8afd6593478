package agent_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/guest/agentproto"
	"github.com/zygote/zygote/guest/initd/initdtest"
)

// TestWorkloadExit: the host waits for the workload's exit, and a host
// that reconnects after the exit learns of it from Hello.
func TestWorkloadExit(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)
	if _, err := c.WaitWorkload(ctx); !errdefs.IsNotFound(err) {
		t.Fatalf("WaitWorkload without a workload: %v, want NotFound", err)
	}
	if h := c.Hello(); h.Workload != nil || !slices.Contains(h.Features, agentproto.FeatureWorkload) {
		t.Fatalf("hello before any workload: %+v", h)
	}
	err := c.Configure(ctx, agent.Config{Process: &agentproto.Process{
		Args: []string{"sh", "-c", `echo "in $PWD as $GREETING"; sleep 0.3; exit 5`}, Env: []string{"GREETING=hi"}, WorkingDir: "/"}})
	if err != nil {
		t.Fatalf("Configure: %v", err)
	}
	// A cancelled wait ends at once and leaves the workload alone.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	if _, err := c.WaitWorkload(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled wait: %v", err)
	}
	cancel()
	st, err := c.WaitWorkload(ctx)
	if err != nil || st.Code != 5 {
		t.Fatalf("WaitWorkload = %+v, %v; want code 5", st, err)
	}
	waitFileContains(t, a.WorkloadLog, "in / as hi")
	// Waiting again answers at once.
	if st, err := c.WaitWorkload(ctx); err != nil || st.Code != 5 {
		t.Fatalf("second WaitWorkload = %+v, %v", st, err)
	}
	c.Close()
	c2 := dial(t, a.Socket)
	if w := c2.Hello().Workload; w == nil || w.Pid == 0 || w.Exited == nil || w.Exited.Code != 5 {
		t.Fatalf("hello after the exit: %+v", w)
	}
}

func TestWorkloadKilledBySignal(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)
	if err := c.Configure(ctx, agent.Config{Process: &agentproto.Process{Args: []string{"sh", "-c", "kill -TERM $$"}}}); err != nil {
		t.Fatal(err)
	}
	st, err := c.WaitWorkload(ctx)
	if err != nil || st.Code != 128+15 || st.Signal != "terminated" {
		t.Fatalf("WaitWorkload = %+v, %v; want 143 terminated", st, err)
	}
}

// TestWorkloadStartFailures: a workload that cannot start fails Configure
// with the shell's code, and the agent stays unconfigured.
func TestWorkloadStartFailures(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)
	noexec := filepath.Join(t.TempDir(), "noexec")
	os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644)
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"/no/such/workload"}, 127},
		{[]string{"no-such-workload-in-path"}, 127},
		{[]string{noexec}, 126},
		{[]string{"/"}, 126},
	} {
		err := c.Configure(ctx, agent.Config{Process: &agentproto.Process{Args: tc.args}})
		var re *agent.RemoteError
		if !errors.As(err, &re) || re.ExitCode != tc.code || !errdefs.IsInvalidArgument(err) {
			t.Errorf("Configure %q = %v (%+v), want exit code %d", tc.args, err, re, tc.code)
		}
	}
	if err := c.Configure(ctx, agent.Config{Root: &agentproto.RootFS{Serial: "r", FSType: "ext4"}}); !errdefs.IsNotImplemented(err) {
		t.Errorf("a root without a provisioner: %v, want NotImplemented", err)
	}
	if err := c.Configure(ctx, agent.Config{Command: []string{"true"}, Process: &agentproto.Process{Args: []string{"true"}}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("command and process: %v", err)
	}
	if err := c.Configure(ctx, agent.Config{Process: &agentproto.Process{Args: []string{"true"}}}); err != nil {
		t.Fatalf("Configure after failed starts: %v", err)
	}
}
