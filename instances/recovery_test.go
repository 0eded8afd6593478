package instances_test

import (
	"context"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/agentproto"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/hypervisor/drivertest"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/instances/instancestest"
	"github.com/zygote/zygote/store"
)

// The crash rules, branch by branch: each case leaves the store and the
// disk as a daemon killed at one point of one operation leaves them, then
// starts a new daemon (Reconcile) and asserts exactly the outcome the
// operation's rule promises (recoveryRules; docs/instances.md). Where the
// rule keeps a VM's memory (adopted, resumed, committed Standby, restored
// after a park) the guest's data written before the crash must still be
// there: a rule that discards it fails its case.

// recoveryBranches names every outcome of every rule in recoveryRules;
// TestRecoveryRuleBranches has one case per entry (and fails on an op it
// does not list).
var recoveryBranches = map[store.Op][]string{
	store.OpCreate:  {"VMM booted, not committed", "directory only", "image disks made, no VMM", "network slot acquired, not booted"},
	store.OpStart:   {"VMM alive", "VMM never started"},
	store.OpStop:    {"VMM alive", "VMM gone", "from Standby"},
	store.OpStandby: {"state published, VMM alive", "state published, VMM gone", "no state, VMM alive", "no state, VMM gone"},
	store.OpRestore: {"state not loaded, no VMM", "state not loaded, VMM alive", "state consumed, VMM alive", "state consumed, VMM gone",
		// restore:owned, inside the break-link of an owning source that
		// sharing forks link (sharing.go): its copy half-made, or renamed
		// over the link.
		"state not loaded, break-link temporary left", "state not loaded, link broken"},
	store.OpDelete: {"record, VMM and directory", "directory removed", "record gone"},
	store.OpFork: {"committed and uncommitted forks",
		// fork:linked, a sharing fork's link (sharing.go): the temporary
		// link made, or renamed into place.
		"sharing fork, temporary link left", "sharing fork, link renamed"},
	store.OpResume:          {"source parked", "park interrupted in its standby", "source already running", "source gone"},
	store.OpSnapshot:        {"not committed", "committed"},
	store.OpSnapshotRestore: {"copied", "moved aside", "swapped"},
	store.OpSnapshotDelete:  {"directory and record", "directory removed"},
}

// marker is what the guest writes into its RAM before every crash.
const (
	markerOff = "8192"
	marker    = "before-the-crash"
)

// down plays the daemon dying: the manager goes away (its VMs keep
// running), and fn edits the store as the dead daemon left it.
func down(t *testing.T, h *instancestest.Harness, fn func(tx *store.Tx) error) {
	t.Helper()
	h.Close()
	st, err := store.Open(filepath.Join(h.DataDir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func intent(tx *store.Tx, in store.Intent) error {
	in.CreatedAt = time.Now()
	return tx.PutIntent(in)
}

// edit changes an instance record while the daemon is down.
func edit(tx *store.Tx, id string, fn func(*store.Instance)) error {
	inst, err := tx.Instance(id)
	if err != nil {
		return err
	}
	fn(&inst)
	return tx.PutInstance(inst)
}

// running creates an instance that has written the marker into its RAM.
func running(t *testing.T, h *instancestest.Harness, name string) instances.Instance {
	t.Helper()
	v := create(t, h, name)
	execOut(t, h, name, "write", markerOff, marker)
	return v
}

// parked is running, then Standby.
func parked(t *testing.T, h *instancestest.Harness, name string) instances.Instance {
	t.Helper()
	running(t, h, name)
	v, err := h.M.Standby(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// wantState asserts ref's state after the restart.
func wantState(t *testing.T, h *instancestest.Harness, ref string, want instances.State) instances.Instance {
	t.Helper()
	got := mustGet(t, h, ref)
	if got.State == instances.StateInitializing && want == instances.StateRunning {
		got = h.WaitRunning(ref)
	}
	if got.State != want {
		t.Fatalf("%s is %s after the restart, the rule promises %s (exit message %q)", ref, got.State, want, got.ExitMessage)
	}
	return got
}

// memoryKept asserts ref's guest still holds the marker: read in place
// when Running, after a restore when Standby.
func memoryKept(t *testing.T, h *instancestest.Harness, ref string) {
	t.Helper()
	if mustGet(t, h, ref).State == instances.StateStandby {
		if _, err := h.M.Restore(ctx, ref); err != nil {
			t.Fatalf("restore %s: %v", ref, err)
		}
	}
	h.WaitRunning(ref)
	if out, _ := execOut(t, h, ref, "read", markerOff, "16"); out != marker {
		t.Fatalf("%s's memory after the restart holds %q, want %q: the rule lost the guest's memory", ref, out, marker)
	}
}

// memoryGone asserts the rule discarded ref's memory and saved state.
func memoryGone(t *testing.T, h *instancestest.Harness, id string) {
	t.Helper()
	for _, f := range []string{drivertest.MemoryFile, drivertest.StateFile} {
		if _, err := os.Stat(filepath.Join(h.DataDir, "instances", id, f)); !os.IsNotExist(err) {
			t.Fatalf("%s of a Stopped instance survived: %v", f, err)
		}
	}
}

func noVM(t *testing.T, h *instancestest.Harness, id string) {
	t.Helper()
	if h.VM(id) != nil {
		t.Fatalf("a VMM still runs instance %s", id)
	}
}

func gone(t *testing.T, h *instancestest.Harness, dir string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(h.DataDir, dir)); !os.IsNotExist(err) {
		t.Fatalf("%s survived the reconcile: %v", dir, err)
	}
}

// copyFile copies a file (the fake's state file is small).
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	raw, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

type recoveryCase struct {
	op     store.Op
	branch string
	// crash brings the harness to the crash point, with the daemon down
	// and the intent journaled, and returns the check to run after the
	// restart.
	crash func(t *testing.T, h *instancestest.Harness) (check func(t *testing.T))
}

var recoveryCases = []recoveryCase{
	{store.OpCreate, "VMM booted, not committed", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		half := running(t, h, "half")
		down(t, h, func(tx *store.Tx) error {
			rec, err := tx.Instance(half.ID)
			if err != nil {
				return err
			}
			if err := tx.DeleteInstance(half.ID); err != nil {
				return err
			}
			return intent(tx, store.Intent{ID: half.ID, Op: store.OpCreate, InstanceID: half.ID, Pending: &rec})
		})
		return func(t *testing.T) {
			if _, err := h.M.Get(ctx, "half"); !errdefs.IsNotFound(err) {
				t.Fatalf("a half-created instance is visible: %v", err)
			}
			noVM(t, h, half.ID)
			gone(t, h, "instances/"+half.ID)
		}
	}},
	{store.OpCreate, "directory only", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		id := "createdironlyaaaaaaaaaaa"
		os.MkdirAll(filepath.Join(h.DataDir, "instances", id), 0o700)
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: id, Op: store.OpCreate, InstanceID: id, Pending: &store.Instance{ID: id, Name: "half"}})
		})
		return func(t *testing.T) { gone(t, h, "instances/"+id) }
	}},
	{store.OpCreate, "image disks made, no VMM", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		// Killed after the root disk was linked and the overlay formatted
		// (crashpoint create:disks): the rule removes both; the image's
		// own disk stays, used by nobody.
		id := "createdisksaaaaaaaaaaaaa"
		digest := "sha256:" + strings.Repeat("ef", 32)
		imageDisk := filepath.Join(h.DataDir, "images", "rootfs.ext4")
		os.MkdirAll(filepath.Dir(imageDisk), 0o700)
		if err := os.WriteFile(imageDisk, []byte("root disk"), 0o444); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(h.DataDir, "instances", id)
		os.MkdirAll(dir, 0o700)
		if err := os.Link(imageDisk, filepath.Join(dir, "rootfs.ext4")); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "overlay.ext4"), []byte("overlay"), 0o600); err != nil {
			t.Fatal(err)
		}
		pending := store.Instance{ID: id, Name: "half", Spec: store.Spec{Image: "registry.test/app:1", ImageDigest: digest, RootFSType: "ext4", OverlayBytes: 64 << 20}}
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: id, Op: store.OpCreate, InstanceID: id, Pending: &pending})
		})
		return func(t *testing.T) {
			gone(t, h, "instances/"+id)
			fi, err := os.Stat(imageDisk)
			if err != nil || fi.Sys().(*syscall.Stat_t).Nlink != 1 {
				t.Errorf("the image's disk after the rollback: %v (links %v)", err, fi)
			}
			if users := instances.ImageUsers(h.Store)(digest); len(users) != 0 {
				t.Errorf("the rolled-back create still uses the image: %q", users)
			}
		}
	}},
	{store.OpCreate, "network slot acquired, not booted", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		id := "createslotonlyaaaaaaaaaa"
		os.MkdirAll(filepath.Join(h.DataDir, "instances", id), 0o700)
		if _, err := h.Net.Acquire(ctx, id, instances.NetOptions{Publish: []instances.Port{{HostPort: 8080, GuestPort: 80, Protocol: "tcp"}}}); err != nil {
			t.Fatal(err)
		}
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: id, Op: store.OpCreate, InstanceID: id,
				Pending: &store.Instance{ID: id, Name: "half", Spec: store.Spec{Network: true}}})
		})
		return func(t *testing.T) {
			gone(t, h, "instances/"+id)
			if _, err := h.Net.Get(id); !errdefs.IsNotFound(err) {
				t.Fatalf("the half-created instance's slot is still held: %v", err)
			}
			// Its published port is free again.
			if _, err := h.M.Create(ctx, instances.CreateRequest{Name: "again", Publish: []instances.Port{{HostPort: 8080, GuestPort: 80}}}); err != nil {
				t.Fatalf("create publishing the released port: %v", err)
			}
		}
	}},
	{store.OpStart, "VMM alive", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		// Booted, record not yet committed: it still says Stopped.
		web := running(t, h, "web")
		vm := h.VM(web.ID)
		down(t, h, func(tx *store.Tx) error {
			if err := edit(tx, web.ID, func(r *store.Instance) { r.State, r.VMM = store.Stopped, nil }); err != nil {
				return err
			}
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpStart, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			wantState(t, h, "web", instances.StateRunning)
			if h.VM(web.ID) != vm {
				t.Fatal("the started VMM was not adopted")
			}
			memoryKept(t, h, "web")
		}
	}},
	{store.OpStart, "VMM never started", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		create(t, h, "web")
		web, _ := h.M.Stop(ctx, "web")
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpStart, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			wantState(t, h, "web", instances.StateStopped)
			noVM(t, h, web.ID)
		}
	}},
	{store.OpStop, "VMM alive", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		web := running(t, h, "web")
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpStop, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			wantState(t, h, "web", instances.StateStopped)
			noVM(t, h, web.ID)
			memoryGone(t, h, web.ID)
		}
	}},
	{store.OpStop, "VMM gone", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		web := running(t, h, "web")
		vm := h.VM(web.ID)
		down(t, h, func(tx *store.Tx) error {
			vm.Crash()
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpStop, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			wantState(t, h, "web", instances.StateStopped)
			memoryGone(t, h, web.ID)
		}
	}},
	{store.OpStop, "from Standby", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		web := parked(t, h, "web")
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpStop, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			wantState(t, h, "web", instances.StateStopped)
			memoryGone(t, h, web.ID)
		}
	}},
	{store.OpStandby, "state published, VMM alive", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		web := running(t, h, "web")
		vm := h.VM(web.ID)
		vm.Pause(ctx)
		if _, err := vm.SaveState(ctx); err != nil {
			t.Fatal(err)
		}
		key := web.CacheKey
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpStandby, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			got := wantState(t, h, "web", instances.StateStandby)
			if got.CacheKey == "" || got.CacheKey == key || !got.HasSavedState {
				t.Fatalf("committed Standby: cache key %q (was %q), saved state %v", got.CacheKey, key, got.HasSavedState)
			}
			noVM(t, h, web.ID)
			memoryKept(t, h, "web")
		}
	}},
	{store.OpStandby, "state published, VMM gone", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		// The VMM quit after the save; the commit did not happen.
		web := running(t, h, "web")
		vm := h.VM(web.ID)
		vm.Pause(ctx)
		if _, err := vm.SaveState(ctx); err != nil {
			t.Fatal(err)
		}
		down(t, h, func(tx *store.Tx) error {
			vm.Quit(ctx)
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpStandby, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			wantState(t, h, "web", instances.StateStandby)
			memoryKept(t, h, "web")
		}
	}},
	{store.OpStandby, "no state, VMM alive", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		web := running(t, h, "web")
		vm := h.VM(web.ID)
		vm.Pause(ctx)
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpStandby, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			wantState(t, h, "web", instances.StateRunning)
			if h.VM(web.ID) != vm {
				t.Fatal("the paused VMM was replaced, not resumed")
			}
			if paused, _ := vm.Paused(ctx); paused {
				t.Fatal("the VM stayed paused")
			}
			memoryKept(t, h, "web")
		}
	}},
	{store.OpStandby, "no state, VMM gone", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		web := running(t, h, "web")
		vm := h.VM(web.ID)
		down(t, h, func(tx *store.Tx) error {
			vm.Crash()
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpStandby, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			got := wantState(t, h, "web", instances.StateStopped)
			if got.ExitMessage == "" {
				t.Fatal("Stopped without a reason")
			}
			memoryGone(t, h, web.ID)
		}
	}},
	{store.OpRestore, "state not loaded, no VMM", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		web := parked(t, h, "web")
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpRestore, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			wantState(t, h, "web", instances.StateStandby)
			memoryKept(t, h, "web")
		}
	}},
	{store.OpRestore, "state not loaded, VMM alive", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		// The VMM started but had not consumed the state file: the image
		// is still whole, the half-started VMM must go.
		web := parked(t, h, "web")
		dir := filepath.Join(h.DataDir, "instances", web.ID)
		state := filepath.Join(dir, drivertest.StateFile)
		down(t, h, func(tx *store.Tx) error {
			copyFile(t, state, state+".keep")
			if _, err := h.Fake.Restore(ctx, specOf(h, web)); err != nil {
				return err
			}
			if err := os.Rename(state+".keep", state); err != nil {
				return err
			}
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpRestore, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			wantState(t, h, "web", instances.StateStandby)
			noVM(t, h, web.ID)
			memoryKept(t, h, "web")
		}
	}},
	{store.OpRestore, "state consumed, VMM alive", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		web := parked(t, h, "web")
		down(t, h, func(tx *store.Tx) error {
			if _, err := h.Fake.Restore(ctx, specOf(h, web)); err != nil {
				return err
			}
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpRestore, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			got := wantState(t, h, "web", instances.StateRunning)
			if got.CacheKey != "" {
				t.Fatalf("a restored (running) instance keeps cache key %q", got.CacheKey)
			}
			memoryKept(t, h, "web")
		}
	}},
	{store.OpRestore, "state consumed, VMM gone", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		web := parked(t, h, "web")
		down(t, h, func(tx *store.Tx) error {
			vm, err := h.Fake.Restore(ctx, specOf(h, web))
			if err != nil {
				return err
			}
			vm.Quit(ctx)
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpRestore, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			got := wantState(t, h, "web", instances.StateStopped)
			if got.ExitMessage == "" {
				t.Fatal("Stopped without a reason")
			}
			memoryGone(t, h, web.ID)
		}
	}},
	{store.OpDelete, "record, VMM and directory", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		web := running(t, h, "web")
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpDelete, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			if _, err := h.M.Get(ctx, "web"); !errdefs.IsNotFound(err) {
				t.Fatalf("an interrupted delete left the record: %v", err)
			}
			noVM(t, h, web.ID)
			gone(t, h, "instances/"+web.ID)
		}
	}},
	{store.OpDelete, "directory removed", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		web := running(t, h, "web")
		vm := h.VM(web.ID)
		down(t, h, func(tx *store.Tx) error {
			vm.Quit(ctx)
			os.RemoveAll(filepath.Join(h.DataDir, "instances", web.ID))
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpDelete, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			if _, err := h.M.Get(ctx, "web"); !errdefs.IsNotFound(err) {
				t.Fatalf("an interrupted delete left the record: %v", err)
			}
		}
	}},
	{store.OpDelete, "record gone", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		web := running(t, h, "web")
		vm := h.VM(web.ID)
		down(t, h, func(tx *store.Tx) error {
			if err := tx.DeleteInstance(web.ID); err != nil {
				return err
			}
			return intent(tx, store.Intent{ID: web.ID, Op: store.OpDelete, InstanceID: web.ID})
		})
		return func(t *testing.T) {
			gone(t, h, "instances/"+web.ID)
			select {
			case <-vm.Exited():
			default:
				t.Fatal("the VMM of a deleted record still runs")
			}
		}
	}},
	{store.OpFork, "committed and uncommitted forks", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		src := parked(t, h, "src")
		done := fork(t, h, "src", instances.ForkRequest{Name: "done"})
		h.M.Restore(ctx, "done")
		half := "forkhalfaaaaaaaaaaaaaaaa"
		if _, err := instancestest.Clone.Dir(ctx, filepath.Join(h.DataDir, "instances", src.ID), filepath.Join(h.DataDir, "instances", half)); err != nil {
			t.Fatal(err)
		}
		notYet := "forknotyetaaaaaaaaaaaaaa"
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: "forkcallaaaaaaaaaaaaaaaa", Op: store.OpFork, SourceID: src.ID, Members: []string{done.ID, half, notYet}})
		})
		return func(t *testing.T) {
			for _, id := range []string{done.ID, half, notYet} {
				gone(t, h, "instances/"+id)
				noVM(t, h, id)
			}
			if _, err := h.M.Get(ctx, "done"); !errdefs.IsNotFound(err) {
				t.Fatalf("a fork of an interrupted call is visible: %v", err)
			}
			wantState(t, h, "src", instances.StateStandby)
			memoryKept(t, h, "src")
		}
	}},
	{store.OpResume, "source parked", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		src := parked(t, h, "src")
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: "resumeaaaaaaaaaaaaaaaaaa", Op: store.OpResume, InstanceID: src.ID})
		})
		return func(t *testing.T) {
			eventuallyRunning(t, h, "src")
			memoryKept(t, h, "src")
		}
	}},
	{store.OpResume, "park interrupted in its standby", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		// Crash at standby:saved inside a fork's park: the standby rule
		// commits Standby, then the resume restores the source.
		src := running(t, h, "src")
		vm := h.VM(src.ID)
		vm.Pause(ctx)
		if _, err := vm.SaveState(ctx); err != nil {
			t.Fatal(err)
		}
		down(t, h, func(tx *store.Tx) error {
			if err := intent(tx, store.Intent{ID: "resumeaaaaaaaaaaaaaaaaaa", Op: store.OpResume, InstanceID: src.ID}); err != nil {
				return err
			}
			return intent(tx, store.Intent{ID: src.ID, Op: store.OpStandby, InstanceID: src.ID})
		})
		return func(t *testing.T) {
			eventuallyRunning(t, h, "src")
			memoryKept(t, h, "src")
		}
	}},
	{store.OpResume, "source already running", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		// Restored, crash before the intent was dropped.
		src := running(t, h, "src")
		vm := h.VM(src.ID)
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: "resumeaaaaaaaaaaaaaaaaaa", Op: store.OpResume, InstanceID: src.ID})
		})
		return func(t *testing.T) {
			eventuallyRunning(t, h, "src")
			if h.VM(src.ID) != vm {
				t.Fatal("a running source was replaced")
			}
			memoryKept(t, h, "src")
		}
	}},
	{store.OpResume, "source gone", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: "resumeaaaaaaaaaaaaaaaaaa", Op: store.OpResume, InstanceID: "resumegoneaaaaaaaaaaaaaa"})
		})
		return func(t *testing.T) {
			if list, _ := h.M.List(ctx, instances.ListFilter{}); len(list) != 0 {
				t.Fatalf("instances appeared: %v", list)
			}
		}
	}},
	{store.OpSnapshot, "not committed", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		web := running(t, h, "web")
		id := "snappartialaaaaaaaaaaaaa"
		if _, err := instancestest.Clone.Dir(ctx, filepath.Join(h.DataDir, "instances", web.ID), filepath.Join(h.DataDir, "snapshots", id)); err != nil {
			t.Fatal(err)
		}
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: id, Op: store.OpSnapshot, SnapshotID: id, SourceID: web.ID})
		})
		return func(t *testing.T) {
			gone(t, h, "snapshots/"+id)
			if list, _ := h.M.ListSnapshots(ctx, instances.SnapshotFilter{}); len(list) != 0 {
				t.Fatalf("a partial snapshot is listed: %v", list)
			}
			wantState(t, h, "web", instances.StateRunning)
			memoryKept(t, h, "web")
		}
	}},
	{store.OpSnapshot, "committed", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		running(t, h, "web")
		s := snapshot(t, h, "web", "kept")
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: s.ID, Op: store.OpSnapshot, SnapshotID: s.ID, SourceID: s.SourceInstanceID})
		})
		return func(t *testing.T) {
			if _, err := h.M.GetSnapshot(ctx, s.ID); err != nil {
				t.Fatalf("a committed snapshot went: %v", err)
			}
			// Its files are whole: a fork of it runs the guest it copied.
			if _, err := h.M.ForkSnapshot(ctx, s.ID, instances.ForkRequest{Name: "from-kept"}); err != nil {
				t.Fatalf("fork the committed snapshot: %v", err)
			}
			memoryKept(t, h, "from-kept")
		}
	}},
	{store.OpSnapshotDelete, "directory and record", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		running(t, h, "web")
		s := snapshot(t, h, "web", "doomed")
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: s.ID, Op: store.OpSnapshotDelete, SnapshotID: s.ID})
		})
		return func(t *testing.T) {
			if _, err := h.M.GetSnapshot(ctx, s.ID); !errdefs.IsNotFound(err) {
				t.Fatalf("an interrupted snapshot delete left the record: %v", err)
			}
			gone(t, h, "snapshots/"+s.ID)
			memoryKept(t, h, "web")
		}
	}},
	{store.OpSnapshotDelete, "directory removed", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
		running(t, h, "web")
		s := snapshot(t, h, "web", "doomed")
		os.RemoveAll(filepath.Join(h.DataDir, "snapshots", s.ID))
		down(t, h, func(tx *store.Tx) error {
			return intent(tx, store.Intent{ID: s.ID, Op: store.OpSnapshotDelete, SnapshotID: s.ID})
		})
		return func(t *testing.T) {
			if _, err := h.M.GetSnapshot(ctx, s.ID); !errdefs.IsNotFound(err) {
				t.Fatalf("an interrupted snapshot delete left the record: %v", err)
			}
		}
	}},
}

func init() {
	// The snapshot restore's three stages share one body.
	for _, stage := range []string{"copied", "moved aside", "swapped"} {
		recoveryCases = append(recoveryCases, recoveryCase{store.OpSnapshotRestore, stage, func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
			web := create(t, h, "web")
			execOut(t, h, "web", "write", markerOff, "in-the-snapshot!")
			s := snapshot(t, h, "web", "")
			execOut(t, h, "web", "write", markerOff, marker)
			h.M.Standby(ctx, "web")
			dir := filepath.Join(h.DataDir, "instances", web.ID)
			if _, err := instancestest.Clone.Dir(ctx, filepath.Join(h.DataDir, "snapshots", s.ID), dir+".new"); err != nil {
				t.Fatal(err)
			}
			if stage != "copied" {
				os.Rename(dir, dir+".old")
			}
			if stage == "swapped" {
				os.Rename(dir+".new", dir)
			}
			down(t, h, func(tx *store.Tx) error {
				return intent(tx, store.Intent{ID: web.ID, Op: store.OpSnapshotRestore, InstanceID: web.ID, SnapshotID: s.ID})
			})
			return func(t *testing.T) {
				// Both sides of the swap are Standby images: the rule
				// decides whose memory the instance holds.
				wantState(t, h, "web", instances.StateStandby)
				if stage == "copied" {
					memoryKept(t, h, "web") // rolled back: its own memory
				} else if _, err := h.M.Restore(ctx, "web"); err != nil {
					t.Fatalf("restore the swapped-in snapshot: %v", err)
				} else if out, _ := execOut(t, h, "web", "read", markerOff, "16"); out != "in-the-snapshot!" {
					t.Fatalf("after the rolled-forward swap the memory holds %q, want the snapshot's", out)
				}
				gone(t, h, "instances/"+web.ID+".new")
				gone(t, h, "instances/"+web.ID+".old")
			}
		}})
	}
}

func init() {
	// A sharing fork's link (fork:linked): the fork call's rule removes
	// every fork of the call, link and all, and the source's file is
	// untouched (the same inode, the same bytes, one link again).
	for _, step := range []string{"temporary link left", "link renamed"} {
		recoveryCases = append(recoveryCases, recoveryCase{store.OpFork, "sharing fork, " + step, func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
			src := parked(t, h, "src")
			srcDir := filepath.Join(h.DataDir, "instances", src.ID)
			srcIno, _ := links(t, memPath(h, src.ID))
			srcHash := fileHash(t, memPath(h, src.ID))
			// A committed sharing fork of the call, running on the link,
			done := fork(t, h, "src", instances.ForkRequest{Name: "done", Memory: instances.MemoryShared, TargetState: instances.StateRunning})
			// and one not yet committed: copied without its memory file,
			// then linked.
			half := "forkhalfaaaaaaaaaaaaaaaa"
			halfDir := filepath.Join(h.DataDir, "instances", half)
			if _, err := instancestest.Clone.(*clone.Cloner).DirExcept(ctx, srcDir, halfDir, drivertest.MemoryFile); err != nil {
				t.Fatal(err)
			}
			if step == "temporary link left" {
				if err := os.Link(memPath(h, src.ID), filepath.Join(halfDir, "."+drivertest.MemoryFile+".zygote-tmp-link")); err != nil {
					t.Fatal(err)
				}
			} else if err := h.Fake.LinkMemory(srcDir, halfDir); err != nil {
				t.Fatal(err)
			}
			if _, n := links(t, memPath(h, src.ID)); n != 3 {
				t.Fatalf("test is void: the source's memory file has %d links before the crash, want 3", n)
			}
			down(t, h, func(tx *store.Tx) error {
				return intent(tx, store.Intent{ID: "forkcallaaaaaaaaaaaaaaaa", Op: store.OpFork, SourceID: src.ID, Members: []string{done.ID, half}})
			})
			return func(t *testing.T) {
				for _, id := range []string{done.ID, half} {
					gone(t, h, "instances/"+id)
					noVM(t, h, id)
				}
				if _, err := h.M.Get(ctx, "done"); !errdefs.IsNotFound(err) {
					t.Fatalf("a fork of an interrupted call is visible: %v", err)
				}
				noTemporaries(t, h)
				wantState(t, h, "src", instances.StateStandby)
				if ino, n := links(t, memPath(h, src.ID)); ino != srcIno || n != 1 {
					t.Fatalf("the source's memory file: inode %d (was %d), %d links, want its own file with 1", ino, srcIno, n)
				}
				if fileHash(t, memPath(h, src.ID)) != srcHash {
					t.Fatal("the source's memory file changed")
				}
				memoryKept(t, h, "src")
				noSharedWrites(t, h)
			}
		}})
	}
	// An owning source's break-link (restore:owned) while a sharing fork
	// runs on its file: the restore rule keeps it Standby with a new cache
	// key, holding the link or its own identical copy; the temporary is
	// swept; the fork's file and guest are untouched.
	for _, step := range []string{"break-link temporary left", "link broken"} {
		recoveryCases = append(recoveryCases, recoveryCase{store.OpRestore, "state not loaded, " + step, func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
			src := parked(t, h, "src")
			srcDir := filepath.Join(h.DataDir, "instances", src.ID)
			child := fork(t, h, "src", instances.ForkRequest{Name: "child", Memory: instances.MemoryShared, TargetState: instances.StateRunning})
			const childs = "the-childs-own!!"
			execOut(t, h, "child", "write", markerOff, childs)
			childIno, n := links(t, memPath(h, child.ID))
			if n != 2 {
				t.Fatalf("test is void: the shared memory file has %d links, want 2", n)
			}
			down(t, h, func(tx *store.Tx) error {
				if step == "break-link temporary left" {
					// The copy was being written when the daemon died.
					raw, err := os.ReadFile(memPath(h, src.ID))
					if err != nil {
						return err
					}
					if err := os.WriteFile(filepath.Join(srcDir, "."+drivertest.MemoryFile+".zygote-tmp-own"), raw[:len(raw)/2], 0o600); err != nil {
						return err
					}
				} else if copied, err := h.Fake.OwnMemory(ctx, srcDir); err != nil || !copied {
					t.Fatalf("test is void: own the memory file: copied %v, %v", copied, err)
				}
				return intent(tx, store.Intent{ID: src.ID, Op: store.OpRestore, InstanceID: src.ID})
			})
			return func(t *testing.T) {
				got := wantState(t, h, "src", instances.StateStandby)
				if got.CacheKey == "" || got.CacheKey == src.CacheKey || !got.HasSavedState {
					t.Fatalf("kept Standby: cache key %q (was %q), saved state %v", got.CacheKey, src.CacheKey, got.HasSavedState)
				}
				noVM(t, h, src.ID)
				noTemporaries(t, h)
				srcIno, srcLinks := links(t, memPath(h, src.ID))
				ino, n := links(t, memPath(h, child.ID))
				if ino != childIno {
					t.Fatal("the sharing fork's memory file was replaced")
				}
				switch {
				case step == "break-link temporary left" && (srcIno != childIno || srcLinks != 2):
					t.Fatalf("the source holds inode %d with %d links, want the shared link %d (2 links)", srcIno, srcLinks, childIno)
				case step == "link broken" && (srcIno == childIno || srcLinks != 1 || n != 1):
					t.Fatalf("the source holds inode %d with %d links, the fork %d with %d: want two own files", srcIno, srcLinks, ino, n)
				}
				memoryKept(t, h, "src")
				if srcIno, _ := links(t, memPath(h, src.ID)); srcIno == childIno {
					t.Fatal("the source runs on the fork's memory file")
				}
				if _, n := links(t, memPath(h, child.ID)); n != 1 {
					t.Fatalf("the fork's memory file has %d links after its source owned a copy", n)
				}
				wantState(t, h, "child", instances.StateRunning)
				if out, _ := execOut(t, h, "child", "read", markerOff, "16"); out != childs {
					t.Fatalf("the sharing fork holds %q after the restart, want %q", out, childs)
				}
				noSharedWrites(t, h)
			}
		}})
	}
}

// noTemporaries asserts no clone-style temporary (a link, a break-link
// copy, a densify copy) is left anywhere in the data directory.
func noTemporaries(t *testing.T, h *instancestest.Harness) {
	t.Helper()
	filepath.WalkDir(h.DataDir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && clone.IsTempName(d.Name()) {
			t.Errorf("temporary %s survived the reconcile", path)
		}
		return nil
	})
}

// eventuallyRunning waits for a source the reconcile restores in the
// background: Standby until then, never anything else.
func eventuallyRunning(t *testing.T, h *instancestest.Harness, ref string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := mustGet(t, h, ref)
		switch got.State {
		case instances.StateRunning:
			return
		case instances.StateStandby, instances.StateInitializing:
		default:
			t.Fatalf("%s is %s after the restart, the rule promises Running (exit message %q)", ref, got.State, got.ExitMessage)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still %s 5 s after the restart", ref, got.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func specOf(h *instancestest.Harness, v instances.Instance) hypervisor.Spec {
	spec := hypervisor.Spec{ID: v.ID, Dir: filepath.Join(h.DataDir, "instances", v.ID), VCPUs: v.Spec.VCPUs, MemoryBytes: v.Spec.MemoryBytes}
	if v.Spec.Network { // as the dead daemon launched it: on its slot's TAP
		if s, err := h.Net.Get(v.ID); err == nil {
			if tap, err := s.OpenTAP(); err == nil {
				spec.NIC = &hypervisor.NIC{TAP: tap, MAC: agentproto.GuestMAC}
			}
		}
	}
	return spec
}

// TestRecoveryRuleBranches runs every branch of every crash rule.
func TestRecoveryRuleBranches(t *testing.T) {
	ops := instances.RecoveryOps()
	for op := range recoveryBranches {
		if !slices.Contains(ops, op) {
			t.Errorf("recoveryBranches lists %q, which has no recovery rule", op)
		}
	}
	tested := map[string]bool{}
	for _, c := range recoveryCases {
		tested[string(c.op)+"/"+c.branch] = true
	}
	for _, op := range ops {
		if len(recoveryBranches[op]) == 0 {
			t.Errorf("the recovery rule of %q has no branch listed in recoveryBranches (and so no test)", op)
		}
		for _, b := range recoveryBranches[op] {
			if !tested[string(op)+"/"+b] {
				t.Errorf("branch %q of the %q rule has no case", b, op)
			}
		}
	}
	for _, c := range recoveryCases {
		t.Run(string(c.op)+"/"+strings.ReplaceAll(c.branch, " ", "_"), func(t *testing.T) {
			// Networked: every rule must also leave exactly one slot per
			// instance with networking, and none for instances gone.
			h := instancestest.NewNetworked(t, "", instancestest.Clone)
			check := c.crash(t, h)
			h.Restart()
			check(t)
			var recs []store.Instance
			h.Store.View(func(tx *store.Tx) (err error) { recs, err = tx.Instances(); return })
			var want []string
			for _, r := range recs {
				if r.Spec.Network {
					want = append(want, r.ID)
				}
			}
			slices.Sort(want)
			if got := h.Net.Owners(); !slices.Equal(got, want) {
				t.Fatalf("network slots held by %v after the reconcile, want %v (the networked instances)", got, want)
			}
			var left []store.Intent
			h.Store.View(func(tx *store.Tx) (err error) { left, err = tx.Intents(); return })
			if len(left) != 0 {
				t.Fatalf("intents left after the reconcile: %+v", left)
			}
		})
	}
}

// TestUnknownIntentIsKept: an intent of an operation this build has no
// rule for (a newer zygote's) fails the reconcile and stays journaled.
func TestUnknownIntentIsKept(t *testing.T) {
	h := instancestest.New(t, "", instancestest.NoClone)
	down(t, h, func(tx *store.Tx) error {
		return intent(tx, store.Intent{ID: "futureopaaaaaaaaaaaaaaaa", Op: "teleport"})
	})
	st, err := store.Open(filepath.Join(h.DataDir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	m, err := instances.New(instances.Config{
		DataDir: h.DataDir, Store: st, Drivers: []hypervisor.Driver{h.Fake},
		Assets:    func(context.Context) (hypervisor.BootAssets, error) { return hypervisor.BootAssets{}, nil },
		DialAgent: instancestest.DialFakeAgent, Clone: instancestest.NoClone, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Reconcile(ctx); err == nil || !strings.Contains(err.Error(), "teleport") {
		t.Fatalf("reconcile with an intent of an unknown operation: %v", err)
	}
	var left []store.Intent
	st.View(func(tx *store.Tx) (err error) { left, err = tx.Intents(); return })
	if len(left) != 1 || left[0].Op != "teleport" {
		t.Fatalf("the unknown intent was not kept: %+v", left)
	}
}

// TestReconcileRecordsAndSweep runs every branch of the reconcile after
// the intents: each record's VMM adopted or the record Stopped, stray
// VMMs ended, and the one sweep of what no record owns.
func TestReconcileRecordsAndSweep(t *testing.T) {
	for _, c := range []struct {
		name  string
		crash func(t *testing.T, h *instancestest.Harness) func(t *testing.T)
	}{
		{"Running, VMM alive: adopted", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
			web := running(t, h, "web")
			vm := h.VM(web.ID)
			h.Close()
			return func(t *testing.T) {
				wantState(t, h, "web", instances.StateRunning)
				if h.VM(web.ID) != vm {
					t.Fatal("the VMM was not adopted")
				}
				memoryKept(t, h, "web")
			}
		}},
		{"Running, VMM paused: resumed", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
			web := running(t, h, "web")
			vm := h.VM(web.ID)
			h.Close()
			vm.Pause(ctx)
			return func(t *testing.T) {
				wantState(t, h, "web", instances.StateRunning)
				if paused, _ := vm.Paused(ctx); paused {
					t.Fatal("the adopted VM stayed paused")
				}
				memoryKept(t, h, "web")
			}
		}},
		{"Running, restore not yet told: told", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
			web := running(t, h, "web")
			down(t, h, func(tx *store.Tx) error {
				return edit(tx, web.ID, func(r *store.Instance) { r.RestorePending, r.NewIdentity, r.Hostname = true, true, "renamed" })
			})
			return func(t *testing.T) {
				wantState(t, h, "web", instances.StateRunning)
				deadline := time.Now().Add(5 * time.Second)
				for out, _ := execOut(t, h, "web", "hostname"); out != "renamed\n"; out, _ = execOut(t, h, "web", "hostname") {
					if time.Now().After(deadline) {
						t.Fatalf("the guest was not told of its restore: hostname %q", out)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
		}},
		{"Running, VMM gone: Stopped", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
			web := running(t, h, "web")
			vm := h.VM(web.ID)
			h.Close()
			vm.Crash()
			return func(t *testing.T) {
				got := wantState(t, h, "web", instances.StateStopped)
				if got.ExitMessage == "" || got.StoppedAt == nil {
					t.Fatalf("Stopped without a reason: %+v", got)
				}
				memoryGone(t, h, web.ID)
			}
		}},
		{"Standby with a stray VMM: ended, image kept", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
			web := parked(t, h, "web")
			state := filepath.Join(h.DataDir, "instances", web.ID, drivertest.StateFile)
			h.Close()
			copyFile(t, state, state+".keep")
			if _, err := h.Fake.Restore(ctx, specOf(h, web)); err != nil {
				t.Fatal(err)
			}
			os.Rename(state+".keep", state)
			return func(t *testing.T) {
				wantState(t, h, "web", instances.StateStandby)
				noVM(t, h, web.ID)
				memoryKept(t, h, "web")
			}
		}},
		{"Stopped with a stray VMM: ended", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
			web := running(t, h, "web")
			down(t, h, func(tx *store.Tx) error {
				return edit(tx, web.ID, func(r *store.Instance) { r.State, r.VMM = store.Stopped, nil })
			})
			return func(t *testing.T) {
				wantState(t, h, "web", instances.StateStopped)
				noVM(t, h, web.ID)
			}
		}},
		{"orphan instance directory and its VMM: gone", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
			web := running(t, h, "web")
			down(t, h, func(tx *store.Tx) error { return tx.DeleteInstance(web.ID) })
			return func(t *testing.T) {
				gone(t, h, "instances/"+web.ID)
				noVM(t, h, web.ID)
			}
		}},
		{"leftovers gone, unexpected entries kept", func(t *testing.T, h *instancestest.Harness) func(*testing.T) {
			web := running(t, h, "web")
			h.Close()
			var leftovers []string
			for _, p := range []string{
				"instances/zzzzzzzzzzzzzzzzzzzzzzzz",               // orphan id
				"instances/zzzzzzzzzzzzzzzzzzzzzzzz.new",           // swap leftovers
				"instances/" + web.ID + ".old",                     //
				"instances/.zzzzzzzzzzzzzzzzzzzzzzzz.zygote-tmp-1", // interrupted copy
				"snapshots/zzzzzzzzzzzzzzzzzzzzzzzz",               // orphan snapshot
				"instances/" + web.ID + "/.memory.zygote-tmp-2",    // densify copy
			} {
				if err := os.MkdirAll(filepath.Join(h.DataDir, p), 0o700); err != nil {
					t.Fatal(err)
				}
				leftovers = append(leftovers, p)
			}
			os.MkdirAll(filepath.Join(h.DataDir, "instances", "Not-An-Id"), 0o700)
			return func(t *testing.T) {
				for _, p := range leftovers {
					gone(t, h, p)
				}
				if _, err := os.Stat(filepath.Join(h.DataDir, "instances", "Not-An-Id")); err != nil {
					t.Fatalf("an entry the reconcile does not know was removed: %v", err)
				}
				os.Remove(filepath.Join(h.DataDir, "instances", "Not-An-Id"))
				wantState(t, h, "web", instances.StateRunning)
				memoryKept(t, h, "web")
			}
		}},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			h := instancestest.New(t, "", instancestest.NoClone)
			check := c.crash(t, h)
			h.Restart()
			check(t)
		})
	}
}
