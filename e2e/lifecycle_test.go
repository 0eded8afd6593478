package e2e

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/testutil"
)

// counterWorkload keeps a counter in guest RAM (tmpfs) ticking, so a
// restore that resumes anywhere but where the VM stopped shows.
var counterWorkload = []string{"sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /dev/shm/counter.new; mv /dev/shm/counter.new /dev/shm/counter; sleep 0.1; done"}

// TestLifecycle boots one VM and takes it through the foundation's and the
// standby/snapshot issue's lifecycle on XFS (the daemon killed inside
// operations: crash_test.go).
func TestLifecycle(t *testing.T) {
	d := newDaemon(t, testutil.XFS(t))
	d.start()
	web := d.run("web", counterWorkload...)
	if web.Accelerator == "" || web.Hypervisor != "qemu" {
		t.Fatalf("instance: %+v", web)
	}

	t.Run("exec", func(t *testing.T) {
		if out := d.sh("web", "echo hello"); out != "hello" {
			t.Fatalf("echo: %q", out)
		}
		if _, code := d.shCode("web", "echo to-stderr >&2; exit 7"); code != 7 {
			t.Fatalf("exit code %d, want 7", code)
		}
		var out bytes.Buffer
		code, err := d.c.Exec(ctx, "web", client.ExecOptions{Command: []string{"cat"}, Stdin: strings.NewReader("piped"), Stdout: &out})
		if err != nil || code != 0 || out.String() != "piped" {
			t.Fatalf("stdin: %d %v %q", code, err, out.String())
		}
		// The CLI passes the guest's exit code through.
		if out, code := d.cli("exec", "web", "--", "sh", "-c", "echo cli; exit 3"); code != 3 || !strings.Contains(out, "cli") {
			t.Fatalf("zygote exec: exit %d, output %q", code, out)
		}
		if out, code := d.cli("ps"); code != 0 || !strings.Contains(out, "web") || !strings.Contains(out, "Running") {
			t.Fatalf("zygote ps: %d %q", code, out)
		}
	})

	t.Run("standby and restore three times", func(t *testing.T) {
		bootID := d.sh("web", "cat /proc/sys/kernel/random/boot_id")
		for cycle := 1; cycle <= 3; cycle++ {
			d.sh("web", "echo cycle-"+strconv.Itoa(cycle)+" >> /dev/shm/cycles")
			before := counter(t, d)
			in, err := d.c.StandbyInstance(ctx, "web")
			if err != nil || in.State != "Standby" || !in.HasSnapshot {
				t.Fatalf("standby %d: %+v %v", cycle, in.State, err)
			}
			if pids := d.vmmPIDs(); len(pids) != 0 {
				t.Fatalf("standby %d left the VMM running: %v", cycle, pids)
			}
			// The guest clock is stepped on restore: sleep so it would lag.
			time.Sleep(1500 * time.Millisecond)
			if in, err = d.c.RestoreInstance(ctx, "web"); err != nil || in.State != "Running" {
				t.Fatalf("restore %d: %+v %v", cycle, in.State, err)
			}
			after := counter(t, d)
			if after < before || after > before+50 {
				t.Fatalf("cycle %d: counter %d after restore, %d before: it did not continue where it stopped", cycle, after, before)
			}
			if got := d.sh("web", "cat /dev/shm/cycles"); strings.Count(got, "cycle-") != cycle {
				t.Fatalf("cycle %d: tmpfs file holds %q", cycle, got)
			}
			if got := d.sh("web", "cat /proc/sys/kernel/random/boot_id"); got != bootID {
				t.Fatalf("cycle %d: boot id changed (%s → %s): the VM rebooted", cycle, bootID, got)
			}
			guestNow, _ := strconv.ParseInt(d.sh("web", "date +%s"), 10, 64)
			if skew := time.Now().Unix() - guestNow; skew > 2 || skew < -2 {
				t.Fatalf("cycle %d: guest clock off by %d s after restore (not stepped)", cycle, skew)
			}
		}
	})

	t.Run("exec open across standby ends cleanly", func(t *testing.T) {
		done := make(chan error, 1)
		go func() {
			_, err := d.c.Exec(ctx, "web", client.ExecOptions{Command: []string{"sleep", "600"}})
			done <- err
		}()
		time.Sleep(500 * time.Millisecond)
		if _, err := d.c.StandbyInstance(ctx, "web"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done: // an error or exit 127 frame; either way it ended
		case <-time.After(30 * time.Second):
			t.Fatal("an exec open during standby hung")
		}
		if _, err := d.c.RestoreInstance(ctx, "web"); err != nil {
			t.Fatal(err)
		}
		if out := d.sh("web", "pgrep -f 'sleep 600' || echo none"); out != "none" {
			t.Fatalf("the interrupted exec's process survived in the guest: %q", out)
		}
	})

	t.Run("snapshot, change, restore in place", func(t *testing.T) {
		d.sh("web", "echo before > /dev/shm/mark")
		snap, err := d.c.CreateSnapshot(ctx, "web", api.CreateSnapshotRequest{Kind: "Standby", Name: "base"})
		if err != nil {
			t.Fatal(err)
		}
		if in, _ := d.c.GetInstance(ctx, "web"); in.State != "Running" {
			t.Fatalf("source after snapshot: %s", in.State)
		}
		// hypeman's code on snapshot routes for a taken name is 409
		// "conflict" (its class: ErrConflict), not name_conflict.
		_, err = d.c.CreateSnapshot(ctx, "web", api.CreateSnapshotRequest{Kind: "Standby", Name: "base"})
		var se *api.StatusError
		if !errors.As(err, &se) || se.Status != 409 || se.Body.Code != "conflict" || !errdefs.IsConflict(err) || !strings.Contains(se.Body.Message, `already has a snapshot named "base"`) {
			t.Fatalf("duplicate snapshot name: %v, want 409 conflict", err)
		}
		d.sh("web", "echo after > /dev/shm/mark")
		d.c.StandbyInstance(ctx, "web")
		if _, err := d.c.RestoreSnapshot(ctx, "web", snap.ID, api.RestoreSnapshotRequest{}); err != nil {
			t.Fatal(err)
		}
		if got := d.sh("web", "cat /dev/shm/mark"); got != "before" {
			t.Fatalf("after restoring the snapshot: %q, want before", got)
		}
		if err := d.c.DeleteSnapshot(ctx, snap.ID); err != nil {
			t.Fatal(err)
		}
		d.c.StandbyInstance(ctx, "web")
		if _, err := d.c.RestoreInstance(ctx, "web"); err != nil {
			t.Fatalf("the instance does not restore after its snapshot was deleted: %v", err)
		}
	})

	t.Run("bad requests change nothing", func(t *testing.T) {
		if _, err := d.c.CreateSnapshot(ctx, "nope", api.CreateSnapshotRequest{Kind: "Standby"}); !errdefs.IsNotFound(err) {
			t.Fatalf("snapshot of an unknown instance: %v", err)
		}
		if _, err := d.c.RestoreInstance(ctx, "web"); !errdefs.IsInvalidState(err) {
			t.Fatalf("restore of a running instance: %v", err)
		}
		if _, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "Bad_Name"}); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("bad name: %v", err)
		}
	})

	t.Run("corrupt state file", func(t *testing.T) {
		d.c.StandbyInstance(ctx, "web")
		state := filepath.Join(d.instanceDir(web.ID), "state")
		good, _ := os.ReadFile(state)
		os.WriteFile(state, []byte("garbage"), 0o600)
		if _, err := d.c.RestoreInstance(ctx, "web"); !errdefs.IsInvalidState(err) || !strings.Contains(err.Error(), "corrupt") {
			t.Fatalf("restore with a corrupt state file: %v", err)
		}
		if _, err := os.Stat(filepath.Join(d.instanceDir(web.ID), "memory")); err != nil {
			t.Fatalf("a failed restore lost the memory file: %v", err)
		}
		os.WriteFile(state, good, 0o600)
		if _, err := d.c.RestoreInstance(ctx, "web"); err != nil {
			t.Fatalf("restore once the state file is back: %v", err)
		}
	})

	t.Run("daemon SIGKILL, VM adopted", func(t *testing.T) {
		before := counter(t, d)
		d.kill9()
		d.start()
		in := d.waitRunning("web")
		if in.ID != web.ID {
			t.Fatal("a different instance after restart")
		}
		// The same guest, still running: its counter goes on from where it
		// was (a reboot would restart it from 1).
		deadline := time.Now().Add(10 * time.Second)
		for after := counter(t, d); after <= before; after = counter(t, d) {
			if after < before || time.Now().After(deadline) {
				t.Fatalf("counter %d → %d: the adopted VM is not the same running guest", before, after)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})

	t.Run("VMM killed, start, delete leave nothing", func(t *testing.T) {
		ensureState(t, d, "web", "Running")
		for _, pid := range d.vmmPIDs() {
			syscall.Kill(pid, syscall.SIGKILL) // QEMU dies under the daemon
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			in, err := d.c.GetInstance(ctx, "web")
			if err != nil {
				t.Fatal(err)
			}
			if in.State == "Stopped" {
				if in.ExitMessage == "" || in.StoppedAt == nil {
					t.Fatalf("a dead VMM recorded without a reason: %+v", in)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("instance %s 30 s after its VMM died", in.State)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if _, err := d.c.Exec(ctx, "web", client.ExecOptions{Command: []string{"true"}}); !errdefs.IsInvalidState(err) {
			t.Fatalf("exec into an instance whose VMM died: %v", err)
		}
		if _, err := d.c.StartInstance(ctx, "web"); err != nil {
			t.Fatal(err)
		}
		d.waitRunning("web")
		if out := d.sh("web", "echo again"); out != "again" {
			t.Fatalf("exec after start: %q", out)
		}
		if out, code := d.cli("rm", "web"); code == 0 || !strings.Contains(out, "rm -f") {
			t.Fatalf("rm of a running instance without -f: %d %q", code, out)
		}
		if _, code := d.cli("rm", "-f", "web"); code != 0 {
			t.Fatal("rm -f failed")
		}
		if _, err := os.Stat(d.instanceDir(web.ID)); !os.IsNotExist(err) {
			t.Fatal("instance directory left after rm")
		}
		if pids := d.vmmPIDs(); len(pids) != 0 {
			t.Fatalf("rm left VMMs: %v", pids)
		}
	})
}

func counter(t *testing.T, d *daemon) int {
	t.Helper()
	n, err := strconv.Atoi(d.sh("web", "cat /dev/shm/counter"))
	if err != nil {
		t.Fatalf("counter: %v", err)
	}
	return n
}

// ensureState brings ref to Running or Standby.
func ensureState(t *testing.T, d *daemon, ref, want string) {
	t.Helper()
	in, err := d.c.GetInstance(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if in.State == "Initializing" { // adopted, its agent reconnecting
		in = d.waitRunning(ref)
	}
	switch {
	case in.State == want:
	case want == "Standby" && in.State == "Running":
		_, err = d.c.StandbyInstance(ctx, ref)
	case want == "Running" && in.State == "Standby":
		_, err = d.c.RestoreInstance(ctx, ref)
	case want == "Running" && in.State == "Stopped":
		_, err = d.c.StartInstance(ctx, ref)
		d.waitRunning(ref)
	default:
		t.Fatalf("cannot bring %s from %s to %s", ref, in.State, want)
	}
	if err != nil {
		t.Fatal(err)
	}
}
