package e2e

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/internal/testutil"
)

// TestForkXFS and TestForkExt4 check every DESIGN invariant about forks
// with real VMs: on XFS the copies are reflinks, on ext4 sparse copies.
func TestForkXFS(t *testing.T) {
	d := newDaemon(t, testutil.XFS(t))
	d.start()
	forkInvariants(t, d, "reflink", true)
}

func TestForkExt4(t *testing.T) {
	d := newDaemon(t, testutil.Ext4Dir(t))
	d.start()
	forkInvariants(t, d, "copy_file_range", false)
}

func forkInvariants(t *testing.T, d *daemon, strategy string, bootStoppedFork bool) {
	src := d.run("src", counterWorkload...)
	d.sh("src", "echo m0 > /dev/shm/marker")
	if _, err := d.c.StandbyInstance(ctx, "src"); err != nil {
		t.Fatal(err)
	}

	var f1 api.Instance
	t.Run("fork from standby: same bytes, another inode", func(t *testing.T) {
		var err error
		f1, err = d.c.ForkInstance(ctx, "src", api.ForkInstanceRequest{Name: "f1"})
		if err != nil || f1.State != "Standby" || f1.ForkedFrom == nil || f1.ForkedFrom.InstanceID != src.ID {
			t.Fatalf("fork: %+v %v", f1, err)
		}
		if d.memHash(f1.ID) != d.memHash(src.ID) {
			t.Fatal("(e) the fork's memory file differs from the source's at fork time")
		}
		if sameInode(t, filepath.Join(d.instanceDir(f1.ID), "memory"), filepath.Join(d.instanceDir(src.ID), "memory")) {
			t.Fatal("(e) the fork's memory file is the source's inode")
		}
		if !strings.Contains(d.log(), "clone_strategy="+strategy) {
			t.Fatalf("the daemon log does not report clone_strategy=%s", strategy)
		}
	})

	t.Run("source rewritten in place; fork unchanged", func(t *testing.T) {
		forkHash := d.memHash(f1.ID)
		if _, err := d.c.RestoreInstance(ctx, "src"); err != nil {
			t.Fatal(err)
		}
		d.sh("src", "echo m1 > /dev/shm/marker; dd if=/dev/urandom of=/dev/shm/noise bs=1M count=8 2>/dev/null")
		if _, err := d.c.StandbyInstance(ctx, "src"); err != nil {
			t.Fatal(err)
		}
		if d.memHash(src.ID) == forkHash {
			t.Fatal("test is void: the source's memory did not change")
		}
		if d.memHash(f1.ID) != forkHash {
			t.Fatal("(c) the fork's memory file changed when its source re-parked")
		}
		if _, err := d.c.RestoreInstance(ctx, "f1"); err != nil {
			t.Fatal(err)
		}
		if got := d.sh("f1", "cat /dev/shm/marker"); got != "m0" {
			t.Fatalf("(a) fork sees marker %q, want m0", got)
		}
		if got := d.sh("f1", "hostname"); got != "f1" {
			t.Fatalf("fork hostname %q: the guest was not told it is a new machine", got)
		}
		c1 := guestCounter(t, d, "f1")
		if c2 := guestCounter(t, d, "f1"); c2 < c1 {
			t.Fatal("the fork's counter is not running")
		}
		d.c.StandbyInstance(ctx, "f1")
	})

	t.Run("fork from running", func(t *testing.T) {
		d.c.RestoreInstance(ctx, "src")
		if _, err := d.c.ForkInstance(ctx, "src", api.ForkInstanceRequest{Name: "f2"}); err == nil {
			t.Fatal("fork of a running source without from_running succeeded")
		}
		f2, err := d.c.ForkInstance(ctx, "src", api.ForkInstanceRequest{Name: "f2", FromRunning: true})
		if err != nil || f2.State != "Running" {
			t.Fatalf("fork from running: %+v %v", f2.State, err)
		}
		if in, _ := d.c.GetInstance(ctx, "src"); in.State != "Running" {
			t.Fatalf("source after a from_running fork: %s", in.State)
		}
		if got := d.sh("f2", "cat /dev/shm/marker"); got != "m1" {
			t.Fatalf("fork marker %q", got)
		}
	})

	t.Run("fork from snapshot, snapshot deleted at once", func(t *testing.T) {
		snap, err := d.c.CreateSnapshot(ctx, "src", api.CreateSnapshotRequest{Kind: "Standby"})
		if err != nil {
			t.Fatal(err)
		}
		f3, err := d.c.ForkSnapshot(ctx, snap.ID, api.ForkSnapshotRequest{Name: "f3"})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.c.DeleteSnapshot(ctx, snap.ID); err != nil {
			t.Fatal(err)
		}
		assertLives(t, d, f3.ID, "m1")
	})

	t.Run("fork chain, middle deleted", func(t *testing.T) {
		g2, err := d.c.ForkInstance(ctx, "f1", api.ForkInstanceRequest{Name: "g2"})
		if err != nil {
			t.Fatal(err)
		}
		g3, err := d.c.ForkInstance(ctx, "g2", api.ForkInstanceRequest{Name: "g3"})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.c.DeleteInstance(ctx, g2.ID, true); err != nil {
			t.Fatal(err)
		}
		assertLives(t, d, g3.ID, "m0")
		assertLives(t, d, f1.ID, "m0")
	})

	t.Run("source instance deleted at once", func(t *testing.T) {
		f4, err := d.c.ForkInstance(ctx, "src", api.ForkInstanceRequest{Name: "f4", FromRunning: true, TargetState: "Standby"})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.c.DeleteInstance(ctx, src.ID, true); err != nil {
			t.Fatal(err)
		}
		assertLives(t, d, f4.ID, "m1")
	})

	t.Run("batch fork", func(t *testing.T) {
		forks, err := d.c.ForkInstanceBatch(ctx, "f4", api.ForkInstanceRequest{NamePrefix: "w", Count: 3, TargetState: "Running"})
		if err != nil || len(forks) != 3 {
			t.Fatalf("batch: %v", err)
		}
		for _, f := range forks {
			if got := d.sh(f.ID, "cat /dev/shm/marker; hostname"); got != "m1\n"+f.Name {
				t.Fatalf("%s: %q", f.Name, got)
			}
		}
	})

	if bootStoppedFork {
		t.Run("fork from stopped", func(t *testing.T) {
			if _, err := d.c.StopInstance(ctx, "f2"); err != nil {
				t.Fatal(err)
			}
			f5, err := d.c.ForkInstance(ctx, "f2", api.ForkInstanceRequest{Name: "f5", TargetState: "Running"})
			if err != nil {
				t.Fatal(err)
			}
			d.waitRunning(f5.ID)
			if got := d.sh(f5.ID, "hostname; cat /dev/shm/marker 2>/dev/null || echo fresh"); got != "f5\nfresh" {
				t.Fatalf("fork of a stopped instance: %q", got)
			}
		})
	}
}

// assertLives runs, parks and restores an instance and checks its marker.
func assertLives(t *testing.T, d *daemon, id, marker string) {
	t.Helper()
	for i := 0; i < 2; i++ {
		in, err := d.c.GetInstance(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if in.State == "Standby" {
			if _, err := d.c.RestoreInstance(ctx, id); err != nil {
				t.Fatalf("restore %s: %v", in.Name, err)
			}
		}
		if got := d.sh(id, "cat /dev/shm/marker"); got != marker {
			t.Fatalf("%s sees marker %q, want %q", in.Name, got, marker)
		}
		if _, err := d.c.StandbyInstance(ctx, id); err != nil {
			t.Fatalf("park %s: %v", in.Name, err)
		}
	}
}

func guestCounter(t *testing.T, d *daemon, ref string) int {
	t.Helper()
	n, err := strconv.Atoi(d.sh(ref, "cat /dev/shm/counter"))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
