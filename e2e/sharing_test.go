package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/crashpoint"
	"github.com/zygote/zygote/internal/testutil"
)

// TestSharingForksCrashPoints runs sharing forks through the daemon with
// real QEMU VMs and kills the daemon (SIGKILL) at each new step: after a
// fork's memory file was linked (fork:linked) and after an owning source
// broke the link (restore:owned). Every instance restores afterwards, the
// forks keep the memory they inherited and their own writes, and the
// source's are its own.
func TestSharingForksCrashPoints(t *testing.T) {
	d := newDaemon(t, testutil.XFS(t))
	d.start()
	d.run("src")
	d.sh("src", "echo inherited > /dev/shm/note")
	if _, err := d.c.StandbyInstance(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	die := func(point string, op func() error) {
		t.Helper()
		d.stop()
		d.start(crashpoint.Env + "=" + point)
		if err := op(); err == nil {
			t.Fatalf("the operation succeeded although the daemon was to die at %s", point)
		}
		select {
		case <-d.exited:
		case <-time.After(60 * time.Second):
			t.Fatalf("the daemon did not die at %s", point)
		}
		d.start()
	}

	t.Run(crashpoint.ForkLinked, func(t *testing.T) {
		die(crashpoint.ForkLinked, func() error {
			_, err := d.c.ForkInstance(ctx, "src", api.ForkInstanceRequest{Name: "half", Memory: "shared"})
			return err
		})
		if _, err := d.c.GetInstance(ctx, "half"); !errdefs.IsNotFound(err) {
			t.Fatalf("the fork of the interrupted call is visible: %v", err)
		}
		if in, err := d.c.GetInstance(ctx, "src"); err != nil || in.State != "Standby" || in.MemoryLinks != 1 {
			t.Fatalf("source after the crash: %+v %v", in, err)
		}
	})

	t.Run(crashpoint.RestoreOwned, func(t *testing.T) {
		kid, err := d.c.ForkInstance(ctx, "src", api.ForkInstanceRequest{Name: "kid", Memory: "shared", TargetState: "Running"})
		if err != nil || kid.Memory != "shared" {
			t.Fatalf("sharing fork: %+v %v", kid, err)
		}
		d.waitRunning("kid")
		src, _ := d.c.GetInstance(ctx, "src")
		if src.MemoryGroup != kid.MemoryGroup || src.MemoryLinks != 2 {
			t.Fatalf("source %s/%d, fork %s/%d: want one shared file", src.MemoryGroup, src.MemoryLinks, kid.MemoryGroup, kid.MemoryLinks)
		}
		d.sh("kid", "echo kids-own > /dev/shm/mine")
		die(crashpoint.RestoreOwned, func() error { _, err := d.c.RestoreInstance(ctx, "src"); return err })
		if in, err := d.c.GetInstance(ctx, "src"); err != nil || in.State != "Standby" || in.MemoryGroup == kid.MemoryGroup {
			t.Fatalf("source after a crash past its break-link: %+v %v", in, err)
		}
		d.waitRunning("kid") // adopted
		if _, err := d.c.RestoreInstance(ctx, "src"); err != nil {
			t.Fatal(err)
		}
		d.sh("src", "echo rewritten > /dev/shm/note")
		if _, err := d.c.StandbyInstance(ctx, "src"); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			if out := d.sh("kid", "cat /dev/shm/note /dev/shm/mine"); out != "inherited\nkids-own" {
				t.Fatalf("the sharing fork sees %q", out)
			}
			in, err := d.c.StandbyInstance(ctx, "kid")
			if err != nil || in.State != "Standby" {
				t.Fatalf("standby of the sharing fork: %+v %v", in, err)
			}
			if _, err := d.c.RestoreInstance(ctx, "kid"); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := d.c.RestoreInstance(ctx, "src"); err != nil {
			t.Fatal(err)
		}
		if out := d.sh("src", "cat /dev/shm/note"); out != "rewritten" {
			t.Fatalf("the source sees %q", out)
		}
		sharingSettled(t, d)
	})
}

// TestSharingForkChain: 20 generations of sharing forks, each forked from
// its running parent and writing its own mark, all hold one memory file
// (the first parent's, parked at the first fork); each keeps exactly the
// marks of its ancestors and its own through standby and restore, and
// deleting a middle generation harms none.
func TestSharingForkChain(t *testing.T) {
	d := newDaemon(t, testutil.XFS(t))
	d.start()
	d.run("g0")
	d.sh("g0", "echo 0 > /dev/shm/mark-0")
	const gens = 20
	var group string
	for g := 1; g <= gens; g++ {
		name, parent := fmt.Sprintf("g%d", g), fmt.Sprintf("g%d", g-1)
		in, err := d.c.ForkInstance(ctx, parent, api.ForkInstanceRequest{Name: name, FromRunning: true, TargetState: "Running", Memory: "shared"})
		if err != nil {
			t.Fatalf("fork %s: %v", name, err)
		}
		if g == 1 {
			group = in.MemoryGroup
		} else if in.MemoryGroup != group {
			t.Fatalf("%s holds memory %s, generation 1 %s: the chain should share one file", name, in.MemoryGroup, group)
		}
		d.waitRunning(name)
		d.sh(name, fmt.Sprintf("echo %d > /dev/shm/mark-%d", g, g))
	}
	if in, _ := d.c.GetInstance(ctx, "g20"); in.MemoryLinks != gens {
		t.Fatalf("g20's memory file has %d links, want %d (one per sharing generation)", in.MemoryLinks, gens)
	}
	if in, _ := d.c.GetInstance(ctx, "g0"); in.MemoryGroup == group || in.Memory != "owned" {
		t.Fatalf("the owning root %+v still holds the shared file", in)
	}
	if err := d.c.DeleteInstance(ctx, "g10", true); err != nil {
		t.Fatal(err)
	}
	for g := 0; g <= gens; g++ {
		if g == 10 {
			continue
		}
		name := fmt.Sprintf("g%d", g)
		want := ""
		for k := 0; k <= g; k++ {
			want += fmt.Sprintf("%d ", k)
		}
		script := fmt.Sprintf("cat /dev/shm/mark-* | sort -n | tr '\\n' ' '; test ! -e /dev/shm/mark-%d", g+1)
		if got := d.sh(name, script) + " "; got != want {
			t.Fatalf("%s sees marks %q, want %q", name, got, want)
		}
		if g%5 == 1 { // a few through standby and restore
			if _, err := d.c.StandbyInstance(ctx, name); err != nil {
				t.Fatal(err)
			}
			if _, err := d.c.RestoreInstance(ctx, name); err != nil {
				t.Fatal(err)
			}
			if got := d.sh(name, script) + " "; got != want {
				t.Fatalf("%s after standby and restore sees marks %q, want %q", name, got, want)
			}
		}
	}
	sharingSettled(t, d)
}

// TestSharingForksOutliveTheirSource: sharing forks of an instance and of
// its snapshot live on when the snapshot and the instance are deleted the
// moment the forks return (DESIGN invariant 2 with shared memory files).
func TestSharingForksOutliveTheirSource(t *testing.T) {
	d := newDaemon(t, testutil.XFS(t))
	d.start()
	d.run("src")
	d.sh("src", "echo m0 > /dev/shm/marker")
	snap, err := d.c.CreateSnapshot(ctx, "src", api.CreateSnapshotRequest{Kind: "Standby"})
	if err != nil {
		t.Fatal(err)
	}
	fs, err := d.c.ForkSnapshot(ctx, snap.ID, api.ForkSnapshotRequest{Name: "fromsnap", Memory: "shared"})
	if err != nil || fs.Memory != "shared" {
		t.Fatalf("sharing fork of a snapshot: %+v %v", fs, err)
	}
	if err := d.c.DeleteSnapshot(ctx, snap.ID); err != nil {
		t.Fatal(err)
	}
	fi, err := d.c.ForkInstance(ctx, "src", api.ForkInstanceRequest{Name: "frominst", FromRunning: true, TargetState: "Standby", Memory: "shared"})
	if err != nil || fi.Memory != "shared" {
		t.Fatalf("sharing fork of an instance: %+v %v", fi, err)
	}
	if err := d.c.DeleteInstance(ctx, "src", true); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"fromsnap", "frominst"} {
		for i := 0; i < 2; i++ {
			if in, _ := d.c.GetInstance(ctx, name); in.State != "Running" {
				if _, err := d.c.RestoreInstance(ctx, name); err != nil {
					t.Fatalf("restore %s: %v", name, err)
				}
			}
			d.waitRunning(name)
			if got := d.sh(name, "cat /dev/shm/marker"); got != "m0" {
				t.Fatalf("%s sees %q", name, got)
			}
			if _, err := d.c.StandbyInstance(ctx, name); err != nil {
				t.Fatalf("standby %s: %v", name, err)
			}
		}
	}
	sharingSettled(t, d)
}

// sharingSettled asserts every instance is Running (and answers) or
// Standby (and restores, then answers) or Stopped.
func sharingSettled(t *testing.T, d *daemon) {
	t.Helper()
	list, err := d.c.ListInstances(ctx, client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range list {
		switch in.State {
		case "Running", "Initializing":
		case "Standby":
			if _, err := d.c.RestoreInstance(ctx, in.ID); err != nil && !errdefs.IsInvalidState(err) {
				t.Fatalf("%s is Standby but does not restore: %v", in.Name, err)
			}
		case "Stopped":
			continue
		default:
			t.Fatalf("%s is %s", in.Name, in.State)
		}
		d.waitRunning(in.ID)
		if out := d.sh(in.ID, "echo ok"); out != "ok" {
			t.Fatalf("%s does not answer", in.Name)
		}
	}
}
