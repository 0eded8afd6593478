package instances_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor/drivertest"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/instances/instancestest"
	"github.com/zygote/zygote/snapshots"
)

func newCloningHarness(t *testing.T) *instancestest.Harness {
	return instancestest.New(t, "", instancestest.Clone)
}

func snapshot(t *testing.T, h *instancestest.Harness, ref, name string) instances.Snapshot {
	t.Helper()
	s, err := h.M.CreateSnapshot(ctx, ref, instances.SnapshotRequest{Kind: instances.SnapshotStandby, Name: name})
	if err != nil {
		t.Fatalf("snapshot %s: %v", ref, err)
	}
	return s
}

func TestStandbySnapshotOfRunningInstance(t *testing.T) {
	h := newCloningHarness(t)
	web := create(t, h, "web")
	execOut(t, h, "web", "write", "8192", "v1")
	s := snapshot(t, h, "web", "base")
	if got := h.WaitRunning("web"); got.State != instances.StateRunning {
		t.Fatalf("source after snapshot: %s", got.State)
	}
	if s.Kind != instances.SnapshotStandby || s.SourceInstanceID != web.ID || s.CacheKey == "" || s.SizeBytes == 0 {
		t.Fatalf("snapshot: %+v", s)
	}
	dir := filepath.Join(h.DataDir, "snapshots", s.ID)
	man, err := snapshots.Read(dir)
	if err != nil || !man.HasFile(drivertest.MemoryFile) || !man.HasFile(drivertest.StateFile) {
		t.Fatalf("manifest: %+v %v", man, err)
	}
	mem, _ := os.ReadFile(filepath.Join(dir, drivertest.MemoryFile))
	if string(mem[8192:8194]) != "v1" {
		t.Fatal("the snapshot's memory lacks what the guest wrote before it")
	}
	// Ownership: the snapshot's files are its own inodes.
	assertDifferentInode(t, filepath.Join(dir, drivertest.MemoryFile), filepath.Join(h.DataDir, "instances", web.ID, drivertest.MemoryFile))
	// The guest goes on after the snapshot.
	if out, _ := execOut(t, h, "web", "read", "8192", "2"); out != "v1" {
		t.Fatalf("source memory after snapshot: %q", out)
	}
}

func assertDifferentInode(t *testing.T, a, b string) {
	t.Helper()
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	if err1 != nil || err2 != nil {
		t.Fatalf("stat: %v %v", err1, err2)
	}
	if os.SameFile(fa, fb) {
		t.Fatalf("%s and %s are the same inode", a, b)
	}
}

func TestRestoreSnapshotInPlaceUndoesChanges(t *testing.T) {
	h := newCloningHarness(t)
	create(t, h, "web")
	execOut(t, h, "web", "write", "8192", "before")
	s := snapshot(t, h, "web", "")
	execOut(t, h, "web", "write", "8192", "after!")
	if _, err := h.M.RestoreSnapshot(ctx, "web", s.ID, ""); !errdefs.IsInvalidState(err) {
		t.Fatalf("restore a snapshot into a running instance: %v, want InvalidState", err)
	}
	if _, err := h.M.Standby(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	got, err := h.M.RestoreSnapshot(ctx, "web", s.ID, "")
	if err != nil || got.State != instances.StateRunning {
		t.Fatalf("restore snapshot: %v %v", got.State, err)
	}
	if out, _ := execOut(t, h, "web", "read", "8192", "6"); out != "before" {
		t.Fatalf("after restoring the snapshot the guest sees %q, want before", out)
	}
	// The snapshot is immutable: restore it again after more changes.
	execOut(t, h, "web", "write", "8192", "again!")
	h.M.Stop(ctx, "web")
	if got, err = h.M.RestoreSnapshot(ctx, "web", s.ID, instances.StateStandby); err != nil || got.State != instances.StateStandby {
		t.Fatalf("restore to Standby from Stopped: %v %v", got.State, err)
	}
	h.M.Restore(ctx, "web")
	if out, _ := execOut(t, h, "web", "read", "8192", "6"); out != "before" {
		t.Fatalf("second restore: %q", out)
	}
}

func TestDeleteSnapshotLeavesInstance(t *testing.T) {
	h := newCloningHarness(t)
	create(t, h, "web")
	execOut(t, h, "web", "write", "8192", "keep")
	s := snapshot(t, h, "web", "x")
	if err := h.M.DeleteSnapshot(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(h.DataDir, "snapshots", s.ID)); !os.IsNotExist(err) {
		t.Fatal("snapshot directory survived deletion")
	}
	if out, _ := execOut(t, h, "web", "read", "8192", "4"); out != "keep" {
		t.Fatalf("instance after snapshot deletion: %q", out)
	}
	h.M.Standby(ctx, "web")
	if _, err := h.M.Restore(ctx, "web"); err != nil {
		t.Fatalf("instance restores after its snapshot was deleted: %v", err)
	}
	if err := h.M.DeleteSnapshot(ctx, s.ID); !errdefs.IsNotFound(err) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestSnapshotErrors(t *testing.T) {
	h := newCloningHarness(t)
	create(t, h, "web")
	create(t, h, "db")
	dbSnap := snapshot(t, h, "db", "dbsnap")
	snapshot(t, h, "web", "base")
	for _, tc := range []struct {
		name  string
		ref   string
		req   instances.SnapshotRequest
		class error
	}{
		{"unknown instance", "nope", instances.SnapshotRequest{Kind: instances.SnapshotStandby}, errdefs.ErrNotFound},
		{"duplicate name", "web", instances.SnapshotRequest{Kind: instances.SnapshotStandby, Name: "base"}, errdefs.ErrAlreadyExists},
		{"bad name", "web", instances.SnapshotRequest{Kind: instances.SnapshotStandby, Name: "Bad"}, errdefs.ErrInvalidArgument},
		{"bad kind", "web", instances.SnapshotRequest{Kind: "Full"}, errdefs.ErrInvalidArgument},
		{"stopped kind of running", "web", instances.SnapshotRequest{Kind: instances.SnapshotStopped}, errdefs.ErrInvalidState},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := h.M.ListSnapshots(ctx, instances.SnapshotFilter{})
			_, err := h.M.CreateSnapshot(ctx, tc.ref, tc.req)
			if !errors.Is(err, tc.class) {
				t.Fatalf("err = %v, want %v", err, tc.class)
			}
			after, _ := h.M.ListSnapshots(ctx, instances.SnapshotFilter{})
			if len(after) != len(before) {
				t.Fatal("a refused snapshot was listed")
			}
		})
	}
	// The same name on another instance is fine.
	if _, err := h.M.CreateSnapshot(ctx, "db", instances.SnapshotRequest{Kind: instances.SnapshotStandby, Name: "base"}); err != nil {
		t.Fatal(err)
	}
	h.M.Stop(ctx, "web")
	if _, err := h.M.CreateSnapshot(ctx, "web", instances.SnapshotRequest{Kind: instances.SnapshotStandby}); !errdefs.IsInvalidState(err) {
		t.Fatalf("standby snapshot of a stopped instance: %v", err)
	}
	stopped, err := h.M.CreateSnapshot(ctx, "web", instances.SnapshotRequest{Kind: instances.SnapshotStopped, Name: "cold"})
	if err != nil {
		t.Fatal(err)
	}
	if man, _ := snapshots.Read(filepath.Join(h.DataDir, "snapshots", stopped.ID)); man.HasFile(drivertest.MemoryFile) {
		t.Fatal("a Stopped snapshot carries memory")
	}
	if _, err := h.M.RestoreSnapshot(ctx, "web", dbSnap.ID, ""); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("restore another instance's snapshot: %v", err)
	}
	if _, err := h.M.RestoreSnapshot(ctx, "web", stopped.ID, instances.StateStandby); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Standby target from a Stopped snapshot: %v", err)
	}
	list, _ := h.M.ListSnapshots(ctx, instances.SnapshotFilter{Name: "base"})
	if len(list) != 2 {
		t.Fatalf("filter by name: %d", len(list))
	}
	list, _ = h.M.ListSnapshots(ctx, instances.SnapshotFilter{Kind: instances.SnapshotStopped})
	if len(list) != 1 || list[0].ID != stopped.ID {
		t.Fatalf("filter by kind: %v", list)
	}
}

func TestDamagedSnapshotIsRefused(t *testing.T) {
	h := newCloningHarness(t)
	create(t, h, "web")
	s := snapshot(t, h, "web", "")
	os.Truncate(filepath.Join(h.DataDir, "snapshots", s.ID, drivertest.MemoryFile), 100)
	h.M.Standby(ctx, "web")
	if _, err := h.M.RestoreSnapshot(ctx, "web", s.ID, ""); !errdefs.IsInvalidState(err) {
		t.Fatalf("restore a damaged snapshot: %v", err)
	}
	if _, err := h.M.Restore(ctx, "web"); err != nil {
		t.Fatalf("the instance was harmed by the refused restore: %v", err)
	}
}
