package drivertest

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor"
)

// TestFakeRestoreNeedsSameDevices: like QEMU, the fake loads a saved state
// only into the same device set (serials, modes, MAC), whatever files or
// TAP back them.
func TestFakeRestoreNeedsSameDevices(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, n := range []string{"root.img", "overlay.img", "overlay2.img"} {
		if err := os.WriteFile(filepath.Join(dir, n), make([]byte, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tap, _ := os.Open(os.DevNull)
	defer tap.Close()
	spec := hypervisor.Spec{ID: "devs", Dir: dir, VCPUs: 1, MemoryBytes: 4 << 20,
		Disks: []hypervisor.Disk{{Path: "root.img", ReadOnly: true, Serial: "root"}, {Path: "overlay.img", Serial: "overlay"}},
		NIC:   &hypervisor.NIC{TAP: tap, MAC: "02:5a:79:67:00:02"}}
	f := NewFake()
	park := func() {
		t.Helper()
		vm, _, err := f.Boot(ctx, spec, hypervisor.BootAssets{})
		if err != nil {
			t.Fatal(err)
		}
		vm.Pause(ctx)
		if _, err := vm.SaveState(ctx); err != nil {
			t.Fatal(err)
		}
		vm.Quit(ctx)
	}
	park()
	for name, mod := range map[string]func(*hypervisor.Spec){
		"no NIC":          func(s *hypervisor.Spec) { s.NIC = nil },
		"other MAC":       func(s *hypervisor.Spec) { s.NIC = &hypervisor.NIC{TAP: tap, MAC: "02:00:00:00:00:09"} },
		"disk missing":    func(s *hypervisor.Spec) { s.Disks = s.Disks[:1] },
		"root writable":   func(s *hypervisor.Spec) { s.Disks = []hypervisor.Disk{{Path: "root.img", Serial: "root"}, s.Disks[1]} },
		"disks reordered": func(s *hypervisor.Spec) { s.Disks = []hypervisor.Disk{s.Disks[1], s.Disks[0]} },
	} {
		bad := spec
		mod(&bad)
		if _, err := f.Restore(ctx, bad); !errdefs.IsInvalidState(err) {
			t.Errorf("restore with %s: %v, want InvalidState", name, err)
		}
	}
	// Another file behind the same device (a fork's own overlay copy) is fine.
	spec.Disks = []hypervisor.Disk{spec.Disks[0], {Path: "overlay2.img", Serial: "overlay"}}
	vm, err := f.Restore(ctx, spec)
	if err != nil {
		t.Fatalf("restore with the same devices: %v", err)
	}
	vm.Quit(ctx)
}
