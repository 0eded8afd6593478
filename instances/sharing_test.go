package instances_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor/drivertest"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/instances/instancestest"
)

var memoryModes = []instances.MemoryMode{instances.MemoryOwned, instances.MemoryShared}

func links(t *testing.T, path string) (uint64, int) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Ino, int(st.Nlink)
}

// noSharedWrites fails the test if anything asked the fake to write in
// place into a memory file with more than one link, or if any running
// instance holds a linked memory file without running shared.
func noSharedWrites(t *testing.T, h *instancestest.Harness) {
	t.Helper()
	if n := h.Fake.SharedWrites(); n != 0 {
		t.Fatalf("%d in-place writes into a shared memory file", n)
	}
	list, err := h.M.List(ctx, instances.ListFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range list {
		if in.State == instances.StateRunning && in.MemoryLinks > 1 && in.Memory != instances.MemoryShared {
			t.Fatalf("%s runs owning a memory file with %d links", in.Name, in.MemoryLinks)
		}
	}
}

// watchWrites reports every write into the inode of path from now on
// (fanotify FAN_MODIFY: write, fallocate, a reflink or densify swap into
// it), whoever makes it: the manager's own file code included, not only
// the driver's. Not truncate(2), which raises no FAN_MODIFY here: callers
// also compare the file's hash.
func watchWrites(t *testing.T, path string) func() int {
	t.Helper()
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_NONBLOCK|unix.FAN_CLOEXEC, unix.O_RDONLY)
	if err != nil {
		t.Skipf("fanotify: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD, unix.FAN_MODIFY, unix.AT_FDCWD, path); err != nil {
		t.Fatal(err)
	}
	return func() int {
		buf := make([]byte, 4096)
		n, err := unix.Read(fd, buf)
		if err != nil || n <= 0 {
			return 0
		}
		return n / int(unsafe.Sizeof(unix.FanotifyEventMetadata{}))
	}
}

// TestSharingForks: the fork invariants of DESIGN §2, for owning and for
// sharing forks.
func TestSharingForks(t *testing.T) {
	for _, mode := range memoryModes {
		t.Run(string(mode), func(t *testing.T) { sharingInvariants(t, mode) })
	}
}

func sharingInvariants(t *testing.T, mode instances.MemoryMode) {
	shared := mode == instances.MemoryShared
	t.Run("fork shares the parked source's memory file only when shared", func(t *testing.T) {
		h := newCloningHarness(t)
		src := create(t, h, "src")
		execOut(t, h, "src", "write", "8192", "marker")
		h.M.Standby(ctx, "src")
		f := fork(t, h, "src", instances.ForkRequest{Name: "child", Memory: mode})
		if f.Memory != mode {
			t.Fatalf("fork memory mode %q, want %q", f.Memory, mode)
		}
		ino1, n1 := links(t, memPath(h, src.ID))
		ino2, _ := links(t, memPath(h, f.ID))
		if (ino1 == ino2) != shared || (n1 == 2) != shared {
			t.Fatalf("%s fork: inodes %d/%d, source links %d", mode, ino1, ino2, n1)
		}
		if v := mustGet(t, h, "child"); shared && (v.MemoryGroup == "" || v.MemoryGroup != mustGet(t, h, "src").MemoryGroup || v.MemoryLinks != 2) {
			t.Fatalf("sharing group of the fork %q (%d links), of the source %q", v.MemoryGroup, v.MemoryLinks, mustGet(t, h, "src").MemoryGroup)
		}
		assertForkLives(t, h, f.ID, "marker")
		noSharedWrites(t, h)
	})
	t.Run("source restored, dirtied and re-parked", func(t *testing.T) {
		h := newCloningHarness(t)
		src := create(t, h, "src")
		execOut(t, h, "src", "write", "8192", "original")
		h.M.Standby(ctx, "src")
		f := fork(t, h, "src", instances.ForkRequest{Name: "child", Memory: mode})
		before := fileHash(t, memPath(h, f.ID))
		writes := watchWrites(t, memPath(h, f.ID))
		for i := 0; i < 2; i++ {
			if _, err := h.M.Restore(ctx, "src"); err != nil {
				t.Fatal(err)
			}
			noSharedWrites(t, h)
			execOut(t, h, "src", "write", "8192", fmt.Sprintf("CHANGED%d", i))
			if _, err := h.M.Standby(ctx, "src"); err != nil {
				t.Fatal(err)
			}
		}
		if fileHash(t, memPath(h, src.ID)) == before {
			t.Fatal("test is void: the source's memory did not change")
		}
		if fileHash(t, memPath(h, f.ID)) != before {
			t.Fatal("the fork's memory file changed when its source was rewritten")
		}
		if n := writes(); n != 0 {
			t.Fatalf("%d writes into the fork's memory file while its source was rewritten", n)
		}
		if _, n := links(t, memPath(h, f.ID)); n != 1 {
			t.Fatalf("the fork's file still has %d links after the source owned a copy", n)
		}
		assertForkLives(t, h, f.ID, "original")
		noSharedWrites(t, h)
	})
	t.Run("delete source or its snapshot at once", func(t *testing.T) {
		h := newCloningHarness(t)
		create(t, h, "src")
		execOut(t, h, "src", "write", "8192", "kept")
		s := snapshot(t, h, "src", "")
		fs, err := h.M.ForkSnapshot(ctx, s.ID, instances.ForkRequest{Name: "fromsnap", TargetState: instances.StateStandby, Memory: mode})
		if err != nil {
			t.Fatal(err)
		}
		h.M.Standby(ctx, "src")
		f := fork(t, h, "src", instances.ForkRequest{Name: "child", Memory: mode})
		if err := h.M.DeleteSnapshot(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
		if err := h.M.Delete(ctx, "src", true); err != nil {
			t.Fatal(err)
		}
		assertForkLives(t, h, fs[0].ID, "kept")
		assertForkLives(t, h, f.ID, "kept")
		noSharedWrites(t, h)
	})
	t.Run("a fork's standby keeps its writes and never changes its siblings", func(t *testing.T) {
		h := newCloningHarness(t)
		create(t, h, "src")
		execOut(t, h, "src", "write", "8192", "parent")
		h.M.Standby(ctx, "src")
		out, err := h.M.Fork(ctx, "src", instances.ForkRequest{NamePrefix: "sib", Count: 3, TargetState: instances.StateRunning, Memory: mode})
		if err != nil {
			t.Fatal(err)
		}
		base := fileHash(t, memPath(h, out[2].ID))
		writes := watchWrites(t, memPath(h, out[2].ID))
		execOut(t, h, "sib-1", "write", "8192", "mine-1")
		execOut(t, h, "sib-2", "write", "8192", "mine-2")
		for i := 0; i < 2; i++ {
			for _, name := range []string{"sib-1", "sib-2"} {
				if _, err := h.M.Standby(ctx, name); err != nil {
					t.Fatal(err)
				}
				if _, err := h.M.Restore(ctx, name); err != nil {
					t.Fatal(err)
				}
			}
		}
		for name, want := range map[string]string{"sib-1": "mine-1", "sib-2": "mine-2", "sib-3": "parent", "src": "parent"} {
			if mustGet(t, h, name).State != instances.StateRunning {
				h.M.Restore(ctx, name)
			}
			if got, _ := execOut(t, h, name, "read", "8192", "6"); got != want {
				t.Fatalf("%s sees %q, want %q", name, got, want)
			}
		}
		if shared && fileHash(t, memPath(h, out[2].ID)) != base {
			t.Fatal("the shared memory file changed")
		}
		if n := writes(); shared && n != 0 {
			t.Fatalf("%d writes into the shared memory file", n)
		}
		noSharedWrites(t, h)
	})
	t.Run("20-generation chain", func(t *testing.T) {
		h := newCloningHarness(t)
		create(t, h, "g0")
		execOut(t, h, "g0", "write", "8192", "gen00")
		prev := "g0"
		var ids []string
		for g := 1; g <= 20; g++ {
			name := fmt.Sprintf("g%d", g)
			f := fork(t, h, prev, instances.ForkRequest{Name: name, FromRunning: true, TargetState: instances.StateRunning, Memory: mode})
			ids = append(ids, f.ID)
			execOut(t, h, name, "write", "8192", fmt.Sprintf("gen%02d", g))
			execOut(t, h, name, "write", fmt.Sprint(8192+4096*g), "own")
			prev = name
		}
		for _, name := range []string{"g5", "g10", "g15"} {
			if err := h.M.Delete(ctx, name, true); err != nil {
				t.Fatal(err)
			}
		}
		for g := 0; g <= 20; g++ {
			name := fmt.Sprintf("g%d", g)
			if g%5 == 0 && g > 0 && g < 20 {
				continue
			}
			if _, err := h.M.Standby(ctx, name); err != nil {
				t.Fatal(err)
			}
			if _, err := h.M.Restore(ctx, name); err != nil {
				t.Fatal(err)
			}
			if got, _ := execOut(t, h, name, "read", "8192", "5"); got != fmt.Sprintf("gen%02d", g) {
				t.Fatalf("%s sees %q", name, got)
			}
		}
		noSharedWrites(t, h)
	})
}

// TestSharedForkMemoryValidation: a bad mode is 400; the daemon default
// applies when the request names none.
func TestSharedForkMemoryValidation(t *testing.T) {
	h := newCloningHarness(t)
	create(t, h, "src")
	h.M.Standby(ctx, "src")
	if _, err := h.M.Fork(ctx, "src", instances.ForkRequest{Name: "x", Memory: "borrowed"}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("memory mode borrowed: %v", err)
	}
	if f := fork(t, h, "src", instances.ForkRequest{Name: "dflt"}); f.Memory != instances.MemoryOwned {
		t.Fatalf("default fork memory %q", f.Memory)
	}
	// A fork of a stopped source boots its own memory.
	h.M.Stop(ctx, "dflt")
	if f := fork(t, h, "dflt", instances.ForkRequest{Name: "cold", Memory: instances.MemoryShared}); f.Memory != instances.MemoryOwned {
		t.Fatalf("fork of a stopped source: memory %q", f.Memory)
	}
}

// TestSharedPrivateMemoryMetrics: /metrics has each running instance's
// shared and private guest RAM; a sharing fork's writes are private.
func TestSharedPrivateMemoryMetrics(t *testing.T) {
	h := newCloningHarness(t)
	create(t, h, "src")
	h.M.Standby(ctx, "src")
	fork(t, h, "src", instances.ForkRequest{Name: "child", Memory: instances.MemoryShared, TargetState: instances.StateRunning})
	execOut(t, h, "child", "write", "8192", "x")
	got := map[string]float64{}
	mfs, err := h.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "zygote_instance_memory_bytes" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			got[l["name"]+"/"+l["memory"]+"/"+l["kind"]] = m.GetGauge().GetValue()
		}
	}
	if got["child/shared/private"] <= 0 || got["child/shared/shared"] <= 0 || got["child/shared/private"] >= float64(instances.MinMemoryBytes) {
		t.Fatalf("memory metrics %v: want the sharing fork's own pages private and the rest shared", got)
	}
	if _, ok := got["src/owned/private"]; ok {
		t.Fatalf("a parked instance has memory metrics: %v", got)
	}
}

// TestSharingForkCopiesNoMemory: a sharing fork's copy leaves the memory
// file out (it links it), an owning fork's copies it.
func TestSharingForkCopiesNoMemory(t *testing.T) {
	h := newCloningHarness(t)
	create(t, h, "src")
	h.M.Standby(ctx, "src")
	copied := func() float64 {
		mfs, err := h.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var sum float64
		for _, mf := range mfs {
			if mf.GetName() == "zygote_clone_bytes_total" {
				for _, m := range mf.GetMetric() {
					sum += m.GetCounter().GetValue()
				}
			}
		}
		return sum
	}
	before := copied()
	fork(t, h, "src", instances.ForkRequest{Name: "owner", Memory: instances.MemoryOwned})
	owned := copied() - before
	fork(t, h, "src", instances.ForkRequest{Name: "sharer", Memory: instances.MemoryShared})
	shared := copied() - before - owned
	if owned < float64(instances.MinMemoryBytes) || shared >= float64(instances.MinMemoryBytes) {
		t.Fatalf("copied %.0f bytes for an owning fork, %.0f for a sharing one: the sharing fork should not copy its memory file", owned, shared)
	}
}

// TestSharedFileUntouched: every operation on one holder of a shared
// memory file (stop, delete, snapshot, snapshot restored in place, forks
// of a sharing fork) leaves the file's bytes alone (no write of any kind
// into its inode, watched with fanotify), removes or adds exactly its own
// link, and leaves the other holders running their memory.
func TestSharedFileUntouched(t *testing.T) {
	for _, c := range []struct {
		name string
		// op acts on the group; it returns how many links it adds to (+)
		// or takes from (-) the shared file.
		op func(t *testing.T, h *instancestest.Harness) int
	}{
		{"stop a parked sharing fork", func(t *testing.T, h *instancestest.Harness) int {
			a := mustGet(t, h, "a")
			if _, err := h.M.Stop(ctx, "a"); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(memPath(h, a.ID)); !os.IsNotExist(err) {
				t.Fatalf("a stopped sharing fork keeps its memory file: %v", err)
			}
			return -1
		}},
		{"stop a running sharing fork", func(t *testing.T, h *instancestest.Harness) int {
			fork(t, h, "src", instances.ForkRequest{Name: "c", Memory: instances.MemoryShared, TargetState: instances.StateRunning})
			execOut(t, h, "c", "write", "8192", "c-own")
			if _, err := h.M.Stop(ctx, "c"); err != nil {
				t.Fatal(err)
			}
			return 0
		}},
		{"delete a sharing fork", func(t *testing.T, h *instancestest.Harness) int {
			if err := h.M.Delete(ctx, "a", true); err != nil {
				t.Fatal(err)
			}
			return -1
		}},
		{"snapshot a sharing fork: a copy", func(t *testing.T, h *instancestest.Harness) int {
			s := snapshot(t, h, "a", "")
			ino, n := links(t, filepath.Join(h.DataDir, "snapshots", s.ID, drivertest.MemoryFile))
			if shared, _ := links(t, memPath(h, mustGet(t, h, "b").ID)); ino == shared || n != 1 {
				t.Fatalf("the snapshot's memory file is inode %d with %d links, the shared one %d: want its own copy", ino, n, shared)
			}
			if _, err := h.M.ForkSnapshot(ctx, s.ID, instances.ForkRequest{Name: "from-snap", TargetState: instances.StateRunning}); err != nil {
				t.Fatal(err)
			}
			if got, _ := execOut(t, h, "from-snap", "read", "8192", "5"); got != "base!" {
				t.Fatalf("a fork of the snapshot sees %q", got)
			}
			return 0
		}},
		{"snapshot restored into a sharing fork", func(t *testing.T, h *instancestest.Harness) int {
			s := snapshot(t, h, "a", "")
			if _, err := h.M.RestoreSnapshot(ctx, "a", s.ID, instances.StateRunning); err != nil {
				t.Fatal(err)
			}
			if got, _ := execOut(t, h, "a", "read", "8192", "5"); got != "base!" {
				t.Fatalf("the sharing fork restored from its snapshot sees %q", got)
			}
			execOut(t, h, "a", "write", "8192", "a-new")
			if _, err := h.M.Standby(ctx, "a"); err != nil {
				t.Fatal(err)
			}
			return -1
		}},
		{"snapshot restored into the source", func(t *testing.T, h *instancestest.Harness) int {
			s := snapshot(t, h, "src", "")
			if _, err := h.M.RestoreSnapshot(ctx, "src", s.ID, instances.StateRunning); err != nil {
				t.Fatal(err)
			}
			execOut(t, h, "src", "write", "8192", "s-new")
			if _, err := h.M.Standby(ctx, "src"); err != nil {
				t.Fatal(err)
			}
			return -1
		}},
		{"forks of a sharing fork, shared and owned", func(t *testing.T, h *instancestest.Harness) int {
			for _, mode := range memoryModes {
				name := "a-" + string(mode)
				fork(t, h, "a", instances.ForkRequest{Name: name, Memory: mode, TargetState: instances.StateRunning})
				execOut(t, h, name, "write", "8192", "mine!")
				if _, err := h.M.Standby(ctx, name); err != nil {
					t.Fatal(err)
				}
			}
			return +1
		}},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			h := newCloningHarness(t)
			create(t, h, "src")
			execOut(t, h, "src", "write", "8192", "base!")
			h.M.Standby(ctx, "src")
			fork(t, h, "src", instances.ForkRequest{Name: "a", Memory: instances.MemoryShared})
			b := fork(t, h, "src", instances.ForkRequest{Name: "b", Memory: instances.MemoryShared, TargetState: instances.StateRunning})
			execOut(t, h, "b", "write", "12288", "b-own")
			shared := memPath(h, b.ID)
			hash := fileHash(t, shared)
			ino, before := links(t, shared)
			writes := watchWrites(t, shared)
			delta := c.op(t, h)
			if n := writes(); n != 0 {
				t.Fatalf("%d writes into the shared memory file", n)
			}
			if fileHash(t, shared) != hash {
				t.Fatal("the shared memory file changed")
			}
			if got, n := links(t, shared); got != ino || n != before+delta {
				t.Fatalf("the shared file (inode %d) has %d links, want %d (inode %d)", got, n, before+delta, ino)
			}
			for name, want := range map[string]string{"b": "base!", "src": "base!"} {
				if name == "src" && c.name == "snapshot restored into the source" {
					want = "s-new"
				}
				if mustGet(t, h, name).State != instances.StateRunning {
					if _, err := h.M.Restore(ctx, name); err != nil {
						t.Fatal(err)
					}
				}
				if got, _ := execOut(t, h, name, "read", "8192", "5"); got != want {
					t.Fatalf("%s sees %q, want %q", name, got, want)
				}
			}
			if got, _ := execOut(t, h, "b", "read", "12288", "5"); got != "b-own" {
				t.Fatalf("b lost its own write: %q", got)
			}
			noSharedWrites(t, h)
		})
	}
}
