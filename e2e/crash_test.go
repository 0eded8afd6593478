package e2e

import (
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
	"github.com/zygote/zygote/images/imagestest"
	"github.com/zygote/zygote/internal/crashpoint"
	"github.com/zygote/zygote/internal/testutil"
)

// TestCrashPoints kills the daemon (SIGKILL, crashpoint.Hit) at every
// named point of the operations and checks that the next daemon ends in
// exactly the state the operation's recovery rule promises
// (instances/reconcile.go, recoveryRules; docs/instances.md): never
// "Running or Stopped". A rule that discarded a parked or adopted VM's
// memory fails here: the guest's boot id and its RAM counter must
// survive every one of these crashes.
func TestCrashPoints(t *testing.T) {
	d := newDaemon(t, testutil.XFS(t))
	d.start()
	web := d.run("web", counterWorkload...)
	var bootID string   // the guest's before the operation
	var imageRef string // the image the image-create case pulls

	// sameGuest checks web runs the guest it ran before the crash: the
	// same boot (no reboot, memory kept) and its RAM counter not behind.
	sameGuest := func(t *testing.T, before int) {
		t.Helper()
		if got := d.sh("web", "cat /proc/sys/kernel/random/boot_id"); got != bootID {
			t.Fatalf("boot id %s → %s: the guest rebooted, its memory was discarded", bootID, got)
		}
		if after := webCounter(t, d); after < before {
			t.Fatalf("counter %d → %d: the guest's memory went back", before, after)
		}
	}

	for _, tc := range []struct {
		point string
		// from is web's state before the operation.
		from string
		// prepare runs before the daemon that will crash starts.
		prepare func(t *testing.T)
		op      func(t *testing.T) error
		// check asserts the rule's outcome once the next daemon is up.
		check func(t *testing.T, before int)
	}{
		{
			// create: roll back; web is untouched.
			point: crashpoint.CreateBooted, from: "Running",
			op: func(*testing.T) error {
				_, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "half"})
				return err
			},
			check: func(t *testing.T, before int) {
				if _, err := d.c.GetInstance(ctx, "half"); !errdefs.IsNotFound(err) {
					t.Fatalf("a half-created instance is visible: %v", err)
				}
				exactly(t, d, "web", "Running")
				sameGuest(t, before)
			},
		},
		{
			// an image create killed after its disks were made: roll
			// back; the root disk link and the overlay go with the
			// directory, the image stays.
			point: crashpoint.CreateDisks, from: "Running",
			prepare: func(t *testing.T) {
				reg := imagestest.StartRegistry(t)
				imageRef = reg + "/busybox:crash"
				imagestest.PushImage(t, imageRef, imagestest.BusyboxImage(t))
			},
			op: func(*testing.T) error {
				_, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "half", Image: imageRef, Cmd: []string{"-c", "sleep 1000"}, OverlaySize: "64MB"})
				return err
			},
			check: func(t *testing.T, before int) {
				if _, err := d.c.GetInstance(ctx, "half"); !errdefs.IsNotFound(err) {
					t.Fatalf("a half-created image instance is visible: %v", err)
				}
				exactly(t, d, "web", "Running")
				sameGuest(t, before)
				disks, _ := filepath.Glob(filepath.Join(d.dataDir, "images", "blobs", "sha256", "*", "rootfs.ext4"))
				for _, p := range disks {
					if fi, err := os.Stat(p); err != nil || fi.Sys().(*syscall.Stat_t).Nlink != 1 {
						t.Errorf("image disk %s after the rollback: %v (a link survived)", p, err)
					}
				}
				if len(disks) != 1 {
					t.Errorf("%d image disks, want the pulled one", len(disks))
				}
			},
		},
		{
			// standby: the state file is published, so commit Standby.
			point: crashpoint.StandbySaved, from: "Running",
			op: func(*testing.T) error { _, err := d.c.StandbyInstance(ctx, "web"); return err },
			check: func(t *testing.T, before int) {
				in := exactly(t, d, "web", "Standby")
				if !in.HasSnapshot {
					t.Fatal("Standby without a standby image")
				}
				if pids := d.vmmPIDs(); len(pids) != 0 {
					t.Fatalf("the VMM of a committed standby still runs: %v", pids)
				}
				if _, err := d.c.RestoreInstance(ctx, "web"); err != nil {
					t.Fatalf("restore the recovered standby image: %v", err)
				}
				sameGuest(t, before)
			},
		},
		{
			// restore: the state file is consumed and the VMM alive, so
			// adopt it: Running.
			point: crashpoint.RestoreLoaded, from: "Standby",
			op: func(*testing.T) error { _, err := d.c.RestoreInstance(ctx, "web"); return err },
			check: func(t *testing.T, before int) {
				exactly(t, d, "web", "Running")
				sameGuest(t, before)
			},
		},
		{
			// snapshot of a Running source: no snapshot record, so the
			// partial directory goes; the parked source is restored.
			point: crashpoint.SnapshotCopied, from: "Running",
			op: func(*testing.T) error {
				_, err := d.c.CreateSnapshot(ctx, "web", api.CreateSnapshotRequest{Kind: "Standby", Name: "crashy"})
				return err
			},
			check: func(t *testing.T, before int) {
				snaps, err := d.c.ListSnapshots(ctx, client.SnapshotListOptions{})
				if err != nil || len(snaps) != 0 {
					t.Fatalf("snapshots after a snapshot interrupted before its commit: %v %v", snaps, err)
				}
				resumed(t, d, "web")
				sameGuest(t, before)
			},
		},
		{
			// fork of a Running source, parked: no fork exists; the
			// parked source is restored.
			point: crashpoint.ForkParked, from: "Running",
			op: func(*testing.T) error {
				_, err := d.c.ForkInstance(ctx, "web", api.ForkInstanceRequest{Name: "crashfork", FromRunning: true})
				return err
			},
			check: func(t *testing.T, before int) {
				if _, err := d.c.GetInstance(ctx, "crashfork"); !errdefs.IsNotFound(err) {
					t.Fatalf("a fork of an interrupted call is visible: %v", err)
				}
				resumed(t, d, "web")
				sameGuest(t, before)
			},
		},
		{
			// fork, copied: every fork of the call goes; the parked
			// source is restored.
			point: crashpoint.ForkCopied, from: "Running",
			op: func(*testing.T) error {
				_, err := d.c.ForkInstanceBatch(ctx, "web", api.ForkInstanceRequest{NamePrefix: "crashfork", Count: 2, FromRunning: true})
				return err
			},
			check: func(t *testing.T, before int) {
				list, err := d.c.ListInstances(ctx, client.ListOptions{})
				if err != nil || len(list) != 1 || list[0].ID != web.ID {
					t.Fatalf("instances after an interrupted fork: %v %v", names(list), err)
				}
				resumed(t, d, "web")
				sameGuest(t, before)
			},
		},
		{
			// snapshot restore, old directory moved aside: the swap rolls
			// forward and the snapshot's record is committed (Standby,
			// with the snapshot's memory).
			point: crashpoint.SwapMovedAside, from: "Standby",
			prepare: func(t *testing.T) {
				d.sh("web", "echo in-snapshot > /dev/shm/mark")
				if _, err := d.c.CreateSnapshot(ctx, "web", api.CreateSnapshotRequest{Kind: "Standby", Name: "base"}); err != nil {
					t.Fatal(err)
				}
				d.sh("web", "echo after-snapshot > /dev/shm/mark")
			},
			op: func(t *testing.T) error {
				snaps, err := d.c.ListSnapshots(ctx, client.SnapshotListOptions{Name: "base"})
				if err != nil || len(snaps) != 1 {
					t.Fatalf("snapshot base: %v %v", snaps, err)
				}
				_, err = d.c.RestoreSnapshot(ctx, "web", snaps[0].ID, api.RestoreSnapshotRequest{TargetState: "Standby"})
				return err
			},
			check: func(t *testing.T, before int) {
				exactly(t, d, "web", "Standby")
				for _, leftover := range []string{".new", ".old"} {
					if _, err := os.Stat(d.instanceDir(web.ID) + leftover); !os.IsNotExist(err) {
						t.Fatalf("%s of the swap survived the reconcile", leftover)
					}
				}
				if _, err := d.c.RestoreInstance(ctx, "web"); err != nil {
					t.Fatalf("restore the swapped-in snapshot: %v", err)
				}
				if got := d.sh("web", "cat /dev/shm/mark"); got != "in-snapshot" {
					t.Fatalf("after the rolled-forward swap the guest holds %q, want the snapshot's memory", got)
				}
				if got := d.sh("web", "cat /proc/sys/kernel/random/boot_id"); got != bootID {
					t.Fatal("the swapped-in snapshot rebooted")
				}
				snaps, _ := d.c.ListSnapshots(ctx, client.SnapshotListOptions{})
				for _, s := range snaps {
					d.c.DeleteSnapshot(ctx, s.ID)
				}
			},
		},
	} {
		t.Run(tc.point, func(t *testing.T) {
			ensureState(t, d, "web", "Running")
			// The guest's counter only grows while it runs: whatever
			// the operation, the guest after the crash must not be behind.
			before := webCounter(t, d)
			bootID = d.sh("web", "cat /proc/sys/kernel/random/boot_id")
			if tc.prepare != nil {
				tc.prepare(t)
			}
			ensureState(t, d, "web", tc.from)
			d.stop()
			d.start(crashpoint.Env + "=" + tc.point)
			if tc.from == "Running" {
				d.waitRunning("web") // adopted: its agent reconnects
			}
			err := tc.op(t)
			if err == nil {
				t.Fatal("the operation succeeded although the daemon was to die in it")
			}
			select {
			case <-d.exited:
			case <-time.After(90 * time.Second):
				t.Fatalf("the daemon did not die at %s; the operation failed with: %v", tc.point, err)
			}
			d.start()
			tc.check(t, before)
			noLeftovers(t, d)
		})
	}
}

// webCounter reads web's RAM counter, waiting for a freshly booted
// guest's workload to write it first.
func webCounter(t *testing.T, d *daemon) int {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out, code := d.shCode("web", "cat /dev/shm/counter")
		if n, err := strconv.Atoi(out); code == 0 && err == nil {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("no counter in the guest's RAM: %q (exit %d)", out, code)
		}
	}
}

// exactly asserts ref is in state want after the restart, letting an
// adopted instance's agent reconnect (Initializing is Running on its way).
func exactly(t *testing.T, d *daemon, ref, want string) api.Instance {
	t.Helper()
	in, err := d.c.GetInstance(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if want == "Running" && in.State == "Initializing" {
		in = d.waitRunning(ref)
	}
	if in.State != want {
		t.Fatalf("%s is %s after the crash, the rule promises %s (exit message %q)", ref, in.State, want, in.ExitMessage)
	}
	return in
}

// resumed asserts a source parked by an interrupted fork or snapshot is
// restored by the daemon itself: Standby (parked) until then, never
// Stopped, Running within a minute.
func resumed(t *testing.T, d *daemon, ref string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		in, err := d.c.GetInstance(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		switch in.State {
		case "Running":
			return
		case "Standby", "Initializing", "Paused":
		default:
			t.Fatalf("a parked source is %s after the crash, the rule promises Running (exit message %q)", in.State, in.ExitMessage)
		}
		if time.Now().After(deadline) {
			t.Fatalf("a parked source is still %s a minute after the restart", in.State)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// noLeftovers asserts the reconcile left no directory no record owns and
// exactly one VMM per running instance.
func noLeftovers(t *testing.T, d *daemon) {
	t.Helper()
	list, err := d.c.ListInstances(ctx, client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	owned, running := map[string]bool{}, 0
	for _, in := range list {
		owned[in.ID] = true
		if in.State == "Running" || in.State == "Initializing" {
			running++
		}
	}
	ents, _ := os.ReadDir(filepath.Join(d.dataDir, "instances"))
	for _, e := range ents {
		if !owned[e.Name()] {
			t.Fatalf("unowned instance directory after the reconcile: %s", e.Name())
		}
	}
	snaps, _ := d.c.ListSnapshots(ctx, client.SnapshotListOptions{})
	if ents, _ := os.ReadDir(filepath.Join(d.dataDir, "snapshots")); len(ents) != len(snaps) {
		t.Fatalf("%d snapshot directories for %d snapshots", len(ents), len(snaps))
	}
	if pids := d.vmmPIDs(); len(pids) != running {
		t.Fatalf("%d VMMs for %d running instances: %v", len(pids), running, pids)
	}
}

func names(list []api.Instance) string {
	var out []string
	for _, in := range list {
		out = append(out, in.Name+"="+in.State)
	}
	return strings.Join(out, ",")
}
