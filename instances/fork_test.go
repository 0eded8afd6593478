package instances_test

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor/drivertest"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/instances/instancestest"
	"github.com/zygote/zygote/store"
)

func fork(t *testing.T, h *instancestest.Harness, ref string, req instances.ForkRequest) instances.Instance {
	t.Helper()
	out, err := h.M.Fork(ctx, ref, req)
	if err != nil || len(out) != 1 {
		t.Fatalf("fork %s: %v", ref, err)
	}
	return out[0]
}

func memPath(h *instancestest.Harness, id string) string {
	return filepath.Join(h.DataDir, "instances", id, drivertest.MemoryFile)
}

func fileHash(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}

func TestForkFromStandbyOwnsItsMemory(t *testing.T) {
	h := newCloningHarness(t)
	src := create(t, h, "src")
	execOut(t, h, "src", "write", "8192", "marker")
	parked, _ := h.M.Standby(ctx, "src")
	f := fork(t, h, "src", instances.ForkRequest{Name: "child"})
	if f.State != instances.StateStandby || f.CacheKey != parked.CacheKey || f.ForkedFrom == nil || f.ForkedFrom.InstanceName != "src" {
		t.Fatalf("fork: state %s key %q (source %q) origin %+v", f.State, f.CacheKey, parked.CacheKey, f.ForkedFrom)
	}
	// (e) at fork time: the source's bytes, another inode.
	if fileHash(t, memPath(h, f.ID)) != fileHash(t, memPath(h, src.ID)) {
		t.Fatal("fork memory differs from the source's at fork time")
	}
	assertDifferentInode(t, memPath(h, f.ID), memPath(h, src.ID))
	if _, err := h.M.Restore(ctx, "child"); err != nil {
		t.Fatal(err)
	}
	if out, _ := execOut(t, h, "child", "read", "8192", "6"); out != "marker" {
		t.Fatalf("fork memory: %q", out)
	}
	if out, _ := execOut(t, h, "child", "hostname"); out != "child\n" {
		t.Fatalf("fork hostname after its first restore: %q (the guest was not given a new identity)", out)
	}
	var rec store.Instance
	h.Store.View(func(tx *store.Tx) (err error) { rec, err = tx.Instance(mustGet(t, h, "child").ID); return })
	if rec.NewIdentity {
		t.Fatal("NewIdentity still set after the fork's first restore")
	}
}

func TestForkRunningNeedsFromRunning(t *testing.T) {
	h := newCloningHarness(t)
	create(t, h, "src")
	execOut(t, h, "src", "write", "8192", "live")
	if _, err := h.M.Fork(ctx, "src", instances.ForkRequest{Name: "child"}); !errdefs.IsInvalidState(err) {
		t.Fatalf("fork a running source without from_running: %v", err)
	}
	f := fork(t, h, "src", instances.ForkRequest{Name: "child", FromRunning: true})
	if f.State != instances.StateRunning {
		t.Fatalf("fork of a running source defaults to Running, got %s", f.State)
	}
	if got := h.WaitRunning("src"); got.State != instances.StateRunning {
		t.Fatalf("source after from_running fork: %s", got.State)
	}
	if out, _ := execOut(t, h, "child", "read", "8192", "4"); out != "live" {
		t.Fatalf("fork memory: %q", out)
	}
}

func TestForkFromStoppedAndSnapshot(t *testing.T) {
	h := newCloningHarness(t)
	create(t, h, "src")
	execOut(t, h, "src", "write", "8192", "snap")
	s := snapshot(t, h, "src", "base")
	fs, err := h.M.ForkSnapshot(ctx, s.ID, instances.ForkRequest{Name: "from-snap"})
	if err != nil || fs[0].State != instances.StateRunning || fs[0].ForkedFrom.SnapshotID != s.ID {
		t.Fatalf("fork a Standby snapshot: %v %+v", err, fs)
	}
	if out, _ := execOut(t, h, "from-snap", "read", "8192", "4"); out != "snap" {
		t.Fatalf("snapshot fork memory: %q", out)
	}
	if _, err := os.Stat(filepath.Join(h.DataDir, "instances", fs[0].ID, "manifest.json")); !os.IsNotExist(err) {
		t.Fatal("a fork of a snapshot carries the snapshot's manifest")
	}
	h.M.Stop(ctx, "src")
	cold := fork(t, h, "src", instances.ForkRequest{Name: "cold"})
	if cold.State != instances.StateStopped {
		t.Fatalf("fork of a stopped source: %s", cold.State)
	}
	if _, err := h.M.Fork(ctx, "src", instances.ForkRequest{Name: "x", TargetState: instances.StateStandby}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Standby fork of a stopped source: %v", err)
	}
	warm := fork(t, h, "src", instances.ForkRequest{Name: "warm", TargetState: instances.StateRunning})
	if warm.State != instances.StateInitializing && warm.State != instances.StateRunning {
		t.Fatalf("Running fork of a stopped source: %s", warm.State)
	}
	h.WaitRunning("warm")
}

// TestSourceIndependence is DESIGN invariant 2: once the fork call
// returns, nothing done to the source changes the fork by one byte.
func TestSourceIndependence(t *testing.T) {
	t.Run("delete source instance at once", func(t *testing.T) {
		h := newCloningHarness(t)
		create(t, h, "src")
		execOut(t, h, "src", "write", "8192", "kept")
		h.M.Standby(ctx, "src")
		f := fork(t, h, "src", instances.ForkRequest{Name: "child"})
		if err := h.M.Delete(ctx, "src", true); err != nil {
			t.Fatal(err)
		}
		assertForkLives(t, h, f.ID, "kept")
	})
	t.Run("delete source snapshot at once", func(t *testing.T) {
		h := newCloningHarness(t)
		create(t, h, "src")
		execOut(t, h, "src", "write", "8192", "kept")
		s := snapshot(t, h, "src", "")
		fs, err := h.M.ForkSnapshot(ctx, s.ID, instances.ForkRequest{Name: "child", TargetState: instances.StateStandby})
		if err != nil {
			t.Fatal(err)
		}
		if err := h.M.DeleteSnapshot(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
		assertForkLives(t, h, fs[0].ID, "kept")
	})
	t.Run("source rewritten in place", func(t *testing.T) {
		h := newCloningHarness(t)
		src := create(t, h, "src")
		execOut(t, h, "src", "write", "8192", "original")
		h.M.Standby(ctx, "src")
		f := fork(t, h, "src", instances.ForkRequest{Name: "child"})
		before := fileHash(t, memPath(h, f.ID))
		h.M.Restore(ctx, "src")
		execOut(t, h, "src", "write", "8192", "CHANGED!")
		h.M.Standby(ctx, "src") // in-place writes into the source's own file
		h.M.Restore(ctx, "src")
		h.M.Standby(ctx, "src")
		if fileHash(t, memPath(h, src.ID)) == before {
			t.Fatal("test is void: the source's memory did not change")
		}
		if fileHash(t, memPath(h, f.ID)) != before {
			t.Fatal("the fork's memory file changed when its source was rewritten")
		}
		assertForkLives(t, h, f.ID, "original")
	})
	t.Run("fork chain, middle generation deleted", func(t *testing.T) {
		h := newCloningHarness(t)
		create(t, h, "g0")
		execOut(t, h, "g0", "write", "8192", "gen0")
		h.M.Standby(ctx, "g0")
		g1 := fork(t, h, "g0", instances.ForkRequest{Name: "g1"})
		g2 := fork(t, h, "g1", instances.ForkRequest{Name: "g2"})
		g3 := fork(t, h, "g2", instances.ForkRequest{Name: "g3"})
		if err := h.M.Delete(ctx, g2.ID, true); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{g1.ID, g3.ID} {
			assertForkLives(t, h, id, "gen0")
		}
		if _, err := h.M.Restore(ctx, "g0"); err != nil {
			t.Fatal(err)
		}
	})
}

// assertForkLives restores, parks and restores a fork and checks its data.
func assertForkLives(t *testing.T, h *instancestest.Harness, id, want string) {
	t.Helper()
	for i := 0; i < 2; i++ {
		if v := mustGet(t, h, id); v.State != instances.StateRunning {
			if _, err := h.M.Restore(ctx, id); err != nil {
				t.Fatalf("restore fork %s: %v", id, err)
			}
		}
		if out, _ := execOut(t, h, id, "read", "8192", fmt.Sprint(len(want))); out != want {
			t.Fatalf("fork %s sees %q, want %q", id, out, want)
		}
		if _, err := h.M.Standby(ctx, id); err != nil {
			t.Fatalf("park fork %s: %v", id, err)
		}
	}
}

func TestBatchFork(t *testing.T) {
	h := newCloningHarness(t)
	create(t, h, "src")
	execOut(t, h, "src", "write", "8192", "batch")
	out, err := h.M.Fork(ctx, "src", instances.ForkRequest{NamePrefix: "w", Count: 4, FromRunning: true})
	if err != nil || len(out) != 4 {
		t.Fatalf("batch fork: %v", err)
	}
	for i, f := range out {
		if f.Name != fmt.Sprintf("w-%d", i+1) {
			t.Fatalf("fork %d named %s", i, f.Name)
		}
		if got, _ := execOut(t, h, f.Name, "read", "8192", "5"); got != "batch" {
			t.Fatalf("%s memory %q", f.Name, got)
		}
	}
	// Parked once: the source's guest saw exactly one restore.
	st, _ := execOut(t, h, "src", "read", "0", "200")
	if !strings.Contains(st, `"restores":1`) {
		t.Fatalf("source guest state %q: want exactly one restore for the whole batch", strings.TrimRight(st, "\x00"))
	}
	for _, bad := range []instances.ForkRequest{
		{NamePrefix: "w", Count: 0},
		{NamePrefix: "w", Count: instances.MaxBatch + 1},
		{NamePrefix: "W", Count: 2},
		{Name: "x", NamePrefix: "w", Count: 2},
	} {
		if _, err := h.M.Fork(ctx, "src", bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("batch %+v: %v, want InvalidArgument", bad, err)
		}
	}
}

func TestFailedForkLeavesNothingAndSourceRunning(t *testing.T) {
	h := newCloningHarness(t)
	src := create(t, h, "src")
	create(t, h, "taken")
	before := instanceDirs(t, h)
	if _, err := h.M.Fork(ctx, "src", instances.ForkRequest{Name: "taken", FromRunning: true}); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("fork onto a taken name: %v", err)
	}
	if _, err := h.M.Fork(ctx, "src", instances.ForkRequest{NamePrefix: "b", Count: 2, FromRunning: true}); err != nil {
		t.Fatal(err)
	}
	h.M.Delete(ctx, "b-1", true)
	// b-2 exists: a batch colliding with it fails as a whole.
	if _, err := h.M.Fork(ctx, "src", instances.ForkRequest{NamePrefix: "b", Count: 3, FromRunning: true}); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("batch colliding with an existing name: %v", err)
	}
	h.M.Delete(ctx, "b-2", true)
	// A restore failing midway removes every fork of the call.
	h.Fake.FailNext("Restore", errors.New("injected restore failure"))
	_, err := h.M.Fork(ctx, "src", instances.ForkRequest{NamePrefix: "f", Count: 3, FromRunning: true})
	if err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("fork with a failing restore: %v", err)
	}
	if got := h.WaitRunning("src"); got.ID != src.ID {
		t.Fatal("source not Running after a failed fork")
	}
	if d := instanceDirs(t, h); len(d) != len(before) {
		t.Fatalf("failed fork left directories: %v (before %v)", d, before)
	}
	for i := 1; i <= 3; i++ {
		if _, err := h.M.Get(ctx, fmt.Sprintf("f-%d", i)); !errdefs.IsNotFound(err) {
			t.Fatalf("fork f-%d of a failed call exists: %v", i, err)
		}
	}
}

// TestForkSucceedsWhenTheSourceFailsToResume: once the forks are made, a
// failure to restore the parked source does not undo them or fail the
// call; the source stays parked and the next daemon start restores it.
func TestForkSucceedsWhenTheSourceFailsToResume(t *testing.T) {
	h := newCloningHarness(t)
	create(t, h, "src")
	h.Fake.FailNext("Restore", errors.New("injected restore failure"))
	out, err := h.M.Fork(ctx, "src", instances.ForkRequest{Name: "child", FromRunning: true, TargetState: instances.StateStandby})
	if err != nil || len(out) != 1 {
		t.Fatalf("fork: %v", err)
	}
	if got := mustGet(t, h, "src"); got.State != instances.StateStandby {
		t.Fatalf("source after a failed resume: %s", got.State)
	}
	h.Restart()
	deadline := time.Now().Add(5 * time.Second)
	for mustGet(t, h, "src").State != instances.StateRunning {
		if time.Now().After(deadline) {
			t.Fatal("the next daemon did not restore the parked source")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := mustGet(t, h, "child"); got.State != instances.StateStandby {
		t.Fatalf("fork: %s", got.State)
	}
}
