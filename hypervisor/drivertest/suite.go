package drivertest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor"
)

// Harness adapts a driver to the conformance suite.
type Harness struct {
	Driver hypervisor.Driver
	Assets hypervisor.BootAssets
	// MemoryBytes of the test VM (default 256 MiB).
	MemoryBytes int64
	// Dir returns a fresh, empty instance directory.
	Dir func(t *testing.T) string
	// Ready waits until the guest can be poked (its agent answers).
	Ready func(t *testing.T, vm hypervisor.VM)
	// Poke makes the running guest remember value in its memory; Peek
	// reads it back.
	Poke func(t *testing.T, vm hypervisor.VM, value string)
	Peek func(t *testing.T, vm hypervisor.VM) string
	// MemoryFile and StateFile name the driver's files in the instance
	// directory.
	MemoryFile, StateFile string
}

// Suite checks the lifecycle contract of hypervisor's package doc on one
// VM, step by step: boot, the save-state preconditions, park, restore
// (state consumed, memory intact), adoption by identity, refused restores
// of missing and corrupt state, a saved state describing the devices the
// VM was adopted with, and discard; and the optional
// capabilities the driver implements (hypervisor.AcceleratorReporter,
// hypervisor.MemoryFiler). Every driver passes it; the
// fake passes it too, which is what makes it a faithful double.
func Suite(t *testing.T, h Harness) {
	ctx := context.Background()
	if h.MemoryBytes == 0 {
		h.MemoryBytes = 256 << 20
	}
	dir := h.Dir(t)
	spec := hypervisor.Spec{ID: "conformancetestinstance0", Dir: dir, VCPUs: 1, MemoryBytes: h.MemoryBytes}
	d := h.Driver

	t.Run("bad devices are refused before a VMM starts", func(t *testing.T) {
		refuseBadDevices(t, h, spec)
	})
	// The VM has one writable disk (the guest may ignore it): a disk is
	// part of the machine, so a restore without it must fail.
	if err := os.WriteFile(filepath.Join(dir, "suite-disk.raw"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	spec.Disks = []hypervisor.Disk{{Path: "suite-disk.raw", Serial: "suite-disk"}}

	vm, state, err := d.Boot(ctx, spec, h.Assets)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	t.Cleanup(func() { vm.Quit(context.Background()) })
	if len(state) == 0 {
		t.Fatal("Boot returned no driver state")
	}
	spec.DriverState = state

	t.Run("optional capabilities", func(t *testing.T) {
		if a, ok := d.(hypervisor.AcceleratorReporter); ok {
			if got := a.AcceleratorOf(state); got == "" {
				t.Errorf("AcceleratorOf(the state Boot returned) is empty")
			}
			if got := a.AcceleratorOf([]byte("not json")); got != "" {
				t.Errorf("AcceleratorOf(garbage) = %q, want empty", got)
			}
		}
		if mf, ok := d.(hypervisor.MemoryFiler); ok {
			p := mf.MemoryFile(dir)
			if filepath.Dir(p) != filepath.Clean(dir) {
				t.Errorf("MemoryFile(%s) = %s: not inside the instance directory", dir, p)
			}
			if h.MemoryFile != "" && filepath.Base(p) != h.MemoryFile {
				t.Errorf("MemoryFile names %s, the harness says %s", filepath.Base(p), h.MemoryFile)
			}
			if _, err := os.Stat(p); err != nil {
				t.Errorf("the memory file of a booted VM: %v", err)
			}
		}
	})

	t.Run("boot", func(t *testing.T) {
		found, err := d.Find(spec)
		if err != nil || len(found) != 1 || found[0] != vm.Process() {
			t.Fatalf("Find = %v, %v; want [%v]", found, err, vm.Process())
		}
		h.Ready(t, vm)
		h.Poke(t, vm, "conformance-1")
		if mu, ok := vm.(hypervisor.MemoryUsageReporter); ok {
			u, err := mu.MemoryUsage()
			if err != nil || u.SharedBytes != 0 || u.PrivateBytes <= 0 {
				t.Fatalf("MemoryUsage of a booted VM: %+v %v (its RAM is its own)", u, err)
			}
		}
	})

	t.Run("save state needs a paused VM", func(t *testing.T) {
		if _, err := vm.SaveState(ctx); !errdefs.IsInvalidState(err) {
			t.Fatalf("SaveState of a running VM: %v, want InvalidState", err)
		}
		if d.HasSavedState(dir) {
			t.Fatal("a refused SaveState left a state file")
		}
	})

	t.Run("park", func(t *testing.T) {
		if err := vm.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if paused, err := vm.Paused(ctx); err != nil || !paused {
			t.Fatalf("Paused = %v, %v after Pause", paused, err)
		}
		if _, err := vm.SaveState(ctx); err != nil {
			t.Fatalf("SaveState: %v", err)
		}
		if !d.HasSavedState(dir) {
			t.Fatal("HasSavedState = false after SaveState")
		}
		if err := vm.Quit(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case <-vm.Exited():
		case <-time.After(30 * time.Second):
			t.Fatal("Exited not closed after Quit")
		}
		if found, _ := d.Find(spec); len(found) != 0 {
			t.Fatalf("Find after Quit = %v", found)
		}
	})

	t.Run("restore consumes the state and keeps memory", func(t *testing.T) {
		if vm, err = d.Restore(ctx, spec); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		if d.HasSavedState(dir) {
			t.Fatal("the state file survived a restore: a crash now would leave a stale standby image")
		}
		if paused, err := vm.Paused(ctx); err != nil || paused {
			t.Fatalf("restored VM paused=%v err=%v", paused, err)
		}
		h.Ready(t, vm)
		if got := h.Peek(t, vm); got != "conformance-1" {
			t.Fatalf("after restore the guest remembers %q", got)
		}
	})

	t.Run("attach by identity", func(t *testing.T) {
		p := vm.Process()
		if _, err := d.Attach(ctx, spec, hypervisor.Process{PID: p.PID, StartTime: p.StartTime + 1}); !errdefs.IsNotFound(err) {
			t.Fatalf("Attach with the wrong start time (a reused pid): %v, want NotFound", err)
		}
		other := spec
		other.ID, other.Dir = "someotherinstanceidxxxxx", h.Dir(t)
		if _, err := d.Attach(ctx, other, p); !errdefs.IsNotFound(err) {
			t.Fatalf("Attach as another instance: %v, want NotFound", err)
		}
		// A restarted daemon: the old handles are gone (QEMU serves one
		// monitor client at a time), the VM runs on.
		vm.Close()
		adopted, err := d.Attach(ctx, spec, p)
		if err != nil {
			t.Fatalf("Attach: %v", err)
		}
		if paused, err := adopted.Paused(ctx); err != nil || paused {
			t.Fatalf("adopted VM paused=%v err=%v", paused, err)
		}
		vm = adopted
		if got := h.Peek(t, vm); got != "conformance-1" {
			t.Fatalf("the adopted VM is not the same guest: %q", got)
		}
	})

	t.Run("restore refuses missing and corrupt state", func(t *testing.T) {
		h.Poke(t, vm, "conformance-2")
		if err := vm.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := vm.SaveState(ctx); err != nil {
			t.Fatal(err)
		}
		vm.Quit(ctx)
		statePath := filepath.Join(dir, h.StateFile)
		good, _ := os.ReadFile(statePath)
		for name, spoil := range map[string]func() error{
			"missing": func() error { return os.Remove(statePath) },
			"corrupt": func() error { return os.WriteFile(statePath, []byte("not a state file"), 0o600) },
		} {
			if err := spoil(); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Restore(ctx, spec); !errdefs.IsInvalidState(err) {
				t.Fatalf("Restore with a %s state file: %v, want InvalidState", name, err)
			}
			if _, err := os.Stat(filepath.Join(dir, h.MemoryFile)); err != nil {
				t.Fatalf("a refused restore (%s state) lost the memory file: %v", name, err)
			}
			if found, _ := d.Find(spec); len(found) != 0 {
				t.Fatalf("a refused restore left a VMM: %v", found)
			}
		}
		if err := os.WriteFile(statePath, good, 0o600); err != nil {
			t.Fatal(err)
		}
		// The same state with another device set (the disk missing, or
		// read-only): refused, every file kept.
		for name, disks := range map[string][]hypervisor.Disk{
			"without its disk":       nil,
			"with its disk readonly": {{Path: "suite-disk.raw", Serial: "suite-disk", ReadOnly: true}},
		} {
			other := spec
			other.Disks = disks
			if vm, err := d.Restore(ctx, other); err == nil {
				vm.Quit(ctx)
				t.Fatalf("Restore %s succeeded", name)
			}
			if !d.HasSavedState(dir) {
				t.Fatalf("a refused restore (%s) consumed the state file", name)
			}
			if found, _ := d.Find(spec); len(found) != 0 {
				t.Fatalf("a refused restore (%s) left a VMM: %v", name, found)
			}
		}
		if err := os.WriteFile(statePath, good, 0o600); err != nil {
			t.Fatal(err)
		}
		if vm, err = d.Restore(ctx, spec); err != nil {
			t.Fatalf("Restore once the state is back: %v", err)
		}
		h.Ready(t, vm)
		if got := h.Peek(t, vm); got != "conformance-2" {
			t.Fatalf("after the second restore the guest remembers %q", got)
		}
	})

	if ms, ok := d.(hypervisor.MemorySharer); ok {
		t.Run("shared memory", func(t *testing.T) {
			vm = sharedMemory(t, h, ms, spec, vm)
		})
	}

	t.Run("an adopted VM saves the devices it is attached with", func(t *testing.T) {
		// A driver cannot read a live VMM's devices back: it trusts the
		// description it is attached with, and a saved state belongs to
		// that machine. Adopted with its disk left out (as a manager that
		// forgets a NIC on adoption would), the VM's state does not
		// match the machine with the disk: the restore is refused before
		// a VMM starts, the state file kept.
		p := vm.Process()
		vm.Close()
		bare := spec
		bare.Disks = nil
		adopted, err := d.Attach(ctx, bare, p)
		if err != nil {
			t.Fatalf("Attach: %v", err)
		}
		vm = adopted
		if err := vm.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := vm.SaveState(ctx); err != nil {
			t.Fatal(err)
		}
		vm.Quit(ctx)
		select {
		case <-vm.Exited():
		case <-time.After(30 * time.Second):
			t.Fatal("Exited not closed after Quit")
		}
		if r, err := d.Restore(ctx, spec); !errdefs.IsInvalidState(err) {
			if err == nil {
				r.Quit(ctx)
			}
			t.Fatalf("Restore with the disk of a state saved by a VM adopted without it: %v, want InvalidState", err)
		}
		if !d.HasSavedState(dir) {
			t.Fatal("the refused restore consumed the state file")
		}
		if found, _ := d.Find(spec); len(found) != 0 {
			t.Fatalf("the refused restore left a VMM: %v", found)
		}
	})

	t.Run("discard", func(t *testing.T) {
		vm.Quit(ctx)
		if err := d.DiscardSavedState(dir); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{h.MemoryFile, h.StateFile} {
			if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s survived DiscardSavedState: %v", name, err)
			}
		}
	})
}

// refuseBadDevices checks that Boot refuses, with InvalidArgument and no
// VMM left behind, disks outside the instance directory (a driver never
// reads another instance's files), missing disk files, bad or duplicate
// serials and a NIC without a TAP or with a multicast MAC.
func refuseBadDevices(t *testing.T, h Harness, spec hypervisor.Spec) {
	ctx := context.Background()
	outside := filepath.Join(h.Dir(t), "root.img")
	if err := os.WriteFile(outside, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	inside := filepath.Join(spec.Dir, "bad-devices.img")
	if err := os.WriteFile(inside, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(inside)
	link := filepath.Join(spec.Dir, "bad-devices-link.img")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(link)
	tap, err := os.Open(os.DevNull) // never reaches a VMM: the MAC is refused first
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	for name, mod := range map[string]func(*hypervisor.Spec){
		"disk outside the instance directory": func(s *hypervisor.Spec) {
			s.Disks = []hypervisor.Disk{{Path: outside, ReadOnly: true, Serial: "root"}}
		},
		"disk escaping by ..": func(s *hypervisor.Spec) {
			s.Disks = []hypervisor.Disk{{Path: "../" + filepath.Base(filepath.Dir(outside)) + "/root.img", Serial: "root"}}
		},
		"disk symlinked to a file outside": func(s *hypervisor.Spec) {
			s.Disks = []hypervisor.Disk{{Path: link, ReadOnly: true, Serial: "root"}}
		},
		"missing disk file": func(s *hypervisor.Spec) {
			s.Disks = []hypervisor.Disk{{Path: "nonexistent.img", Serial: "root"}}
		},
		"serial too long": func(s *hypervisor.Spec) {
			s.Disks = []hypervisor.Disk{{Path: inside, Serial: "abcdefghijklmnopqrstu"}}
		},
		"serial with a comma": func(s *hypervisor.Spec) {
			s.Disks = []hypervisor.Disk{{Path: inside, Serial: "a,b"}}
		},
		"duplicate serial": func(s *hypervisor.Spec) {
			s.Disks = []hypervisor.Disk{{Path: inside, Serial: "x"}, {Path: "bad-devices.img", Serial: "x", ReadOnly: true}}
		},
		"NIC without a TAP": func(s *hypervisor.Spec) {
			s.NIC = &hypervisor.NIC{MAC: "02:5a:79:67:00:02"}
		},
		"NIC with a multicast MAC": func(s *hypervisor.Spec) {
			s.NIC = &hypervisor.NIC{TAP: tap, MAC: "03:5a:79:67:00:02"}
		},
	} {
		bad := spec
		mod(&bad)
		vm, _, err := h.Driver.Boot(ctx, bad, h.Assets)
		if err == nil {
			vm.Quit(ctx)
			t.Fatalf("%s: Boot accepted it", name)
		}
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: Boot = %v, want InvalidArgument", name, err)
		}
		if found, _ := h.Driver.Find(bad); len(found) != 0 {
			t.Fatalf("%s: a refused Boot left a VMM: %v", name, found)
		}
		if _, err := h.Driver.Restore(ctx, bad); err == nil {
			t.Fatalf("%s: Restore accepted it", name)
		}
	}
}

// sharedMemory checks hypervisor.MemorySharer on a running VM (returned
// running again): a fork on a link of the parked VM's memory file runs
// shared and sees the parent's memory; a share-nothing restore of a
// linked file is refused; the fork's standby keeps its own writes out of
// the shared file; the parent owns a copy before it runs again; an owning
// restore of the fork's state loads its writes into its own file.
func sharedMemory(t *testing.T, h Harness, ms hypervisor.MemorySharer, spec hypervisor.Spec, vm hypervisor.VM) hypervisor.VM {
	ctx := context.Background()
	d := h.Driver
	h.Poke(t, vm, "conformance-3")
	park := func(vm hypervisor.VM) {
		t.Helper()
		if err := vm.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := vm.SaveState(ctx); err != nil {
			t.Fatal(err)
		}
		vm.Quit(ctx)
	}
	park(vm)
	fork := spec
	fork.ID, fork.Dir, fork.SharedMemory = "conformancetestfork00000", filepath.Join(h.Dir(t), "fork"), true
	if _, err := clone.Dir(ctx, spec.Dir, fork.Dir, clone.Options{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	if err := ms.LinkMemory(spec.Dir, fork.Dir); err != nil {
		t.Fatal(err)
	}
	g1, n1, err1 := ms.MemoryLinks(spec.Dir)
	g2, n2, err2 := ms.MemoryLinks(fork.Dir)
	if err1 != nil || err2 != nil || g1 != g2 || g1 == "" || n1 != 2 || n2 != 2 {
		t.Fatalf("after LinkMemory: %q/%d/%v and %q/%d/%v", g1, n1, err1, g2, n2, err2)
	}
	base := filepath.Join(fork.Dir, h.MemoryFile)
	baseSum := sumFile(t, base)
	owning := fork
	owning.SharedMemory = false
	if vm, err := d.Restore(ctx, owning); !errdefs.IsInvalidState(err) {
		if err == nil {
			vm.Quit(ctx)
		}
		t.Fatalf("an owning restore of a linked memory file: %v, want InvalidState", err)
	}
	if !d.HasSavedState(fork.Dir) {
		t.Fatal("a refused restore consumed the state")
	}
	fvm, err := d.Restore(ctx, fork)
	if err != nil {
		t.Fatalf("shared Restore: %v", err)
	}
	h.Ready(t, fvm)
	if got := h.Peek(t, fvm); got != "conformance-3" {
		t.Fatalf("the shared fork sees %q", got)
	}
	h.Poke(t, fvm, "fork-memory-1")
	if mu, ok := fvm.(hypervisor.MemoryUsageReporter); ok {
		u, err := mu.MemoryUsage()
		if err != nil || u.SharedBytes <= 0 || u.PrivateBytes <= 0 {
			t.Fatalf("MemoryUsage of a sharing VM that read shared memory and wrote its own: %+v %v", u, err)
		}
	}
	park(fvm)
	if fvm, err = d.Restore(ctx, fork); err != nil {
		t.Fatalf("shared Restore of the fork's own standby: %v", err)
	}
	h.Ready(t, fvm)
	if got := h.Peek(t, fvm); got != "fork-memory-1" {
		t.Fatalf("the shared fork lost its writes across standby: %q", got)
	}
	// The parent runs again: it owns a copy first.
	if _, err := d.Restore(ctx, spec); !errdefs.IsInvalidState(err) {
		t.Fatalf("an owning restore of the parent on a linked file: %v, want InvalidState", err)
	}
	if copied, err := ms.OwnMemory(ctx, spec.Dir); err != nil || !copied {
		t.Fatalf("OwnMemory = %v, %v", copied, err)
	}
	if g, n, _ := ms.MemoryLinks(spec.Dir); g == g2 || n != 1 {
		t.Fatalf("after OwnMemory the parent's file is %s with %d links (shared: %s)", g, n, g2)
	}
	if vm, err = d.Restore(ctx, spec); err != nil {
		t.Fatalf("Restore of the parent: %v", err)
	}
	h.Ready(t, vm)
	if got := h.Peek(t, vm); got != "conformance-3" {
		t.Fatalf("the parent sees %q", got)
	}
	h.Poke(t, vm, "conformance-4")
	park(fvm)
	if got := sumFile(t, base); got != baseSum {
		t.Fatal("the shared memory file changed")
	}
	// Owning restore of the fork's delta state.
	if _, err := ms.OwnMemory(ctx, fork.Dir); err != nil {
		t.Fatal(err)
	}
	if fvm, err = d.Restore(ctx, owning); err != nil {
		t.Fatalf("owning Restore of a shared VM's state: %v", err)
	}
	h.Ready(t, fvm)
	if got := h.Peek(t, fvm); got != "fork-memory-1" {
		t.Fatalf("the owning restore sees %q", got)
	}
	fvm.Quit(ctx)
	if got := h.Peek(t, vm); got != "conformance-4" {
		t.Fatalf("the parent sees %q", got)
	}
	return vm
}

func sumFile(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
