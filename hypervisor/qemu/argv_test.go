package qemu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor"
)

func TestRestoreArgsMatchBootArgs(t *testing.T) {
	spec := hypervisor.Spec{ID: "abc", Dir: "/data/instances/abc", VCPUs: 2, MemoryBytes: 512 << 20, KernelArgs: "foo=1"}
	for _, st := range []driverState{
		{Version: 1, Machine: "q35", Accel: "tcg"},
		{Version: 1, Machine: "microvm", Accel: "tcg", TSCKHz: 2400000},
		{Version: 1, Machine: "q35", Accel: "kvm"},
	} {
		boot := buildArgs(spec, st, false)
		restore := buildArgs(spec, st, true)
		// QEMU loads a migration stream only into the same machine: the
		// restore command line is the boot's plus the incoming flags.
		if want := append(append([]string{}, boot...), "-incoming", "defer", "-S"); !reflect.DeepEqual(restore, want) {
			t.Errorf("%+v: restore args\n%v\nwant\n%v", st, restore, want)
		}
		joined := strings.Join(boot, " ")
		for _, want := range []string{
			"mem-path=/data/instances/abc/memory,share=on",
			"size=512M",
			"-smp 2",
			st.Machine + ",accel=" + st.Accel + ",memory-backend=ram0",
			"name=" + AgentPortName,
			"foo=1",
		} {
			if !strings.Contains(joined, want) {
				t.Errorf("%+v: boot args lack %q: %s", st, want, joined)
			}
		}
		hasTSC := strings.Contains(joined, "tsc_early_khz=2400000")
		if hasTSC != (st.Machine == "microvm" && st.Accel == "tcg") {
			t.Errorf("%+v: tsc_early_khz present=%v", st, hasTSC)
		}
		if st.Machine == "microvm" && !strings.Contains(joined, "virtio-serial-device") {
			t.Errorf("microvm needs virtio-mmio devices: %s", joined)
		}
	}
}

func TestOptionValuesEscapeCommas(t *testing.T) {
	args := buildArgs(hypervisor.Spec{ID: "x", Dir: "/a,b", VCPUs: 1, MemoryBytes: 64 << 20}, driverState{Version: 1, Machine: "q35", Accel: "tcg"}, false)
	if !strings.Contains(strings.Join(args, " "), "mem-path=/a,,b/memory") {
		t.Fatalf("comma in a path not doubled: %v", args)
	}
}

func TestCheckPaths(t *testing.T) {
	if err := checkPaths("/short"); err != nil {
		t.Fatal(err)
	}
	long := "/" + strings.Repeat("d", 100)
	if err := checkPaths(long); err == nil || !strings.Contains(err.Error(), "shorter data directory") {
		t.Fatalf("long socket path: %v", err)
	}
}

func TestDecodeDriverState(t *testing.T) {
	if _, err := decodeDriverState(nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("empty: %v", err)
	}
	if _, err := decodeDriverState([]byte(`{"version":99}`)); !errdefs.IsNotImplemented(err) {
		t.Errorf("newer version: %v", err)
	}
	st, err := decodeDriverState([]byte(`{"version":1,"machine":"q35","accel":"tcg"}`))
	if err != nil || st.Machine != "q35" {
		t.Errorf("good: %+v %v", st, err)
	}
}

func TestOpenState(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state")
	if _, err := openState(p); !errdefs.IsInvalidState(err) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing: %v", err)
	}
	os.WriteFile(p, []byte("QEVM"), 0o600)
	if _, err := openState(p); !errdefs.IsInvalidState(err) || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("truncated: %v", err)
	}
	os.WriteFile(p, append(append([]byte{}, migrationMagic...), 1, 2, 3), 0o600)
	f, err := openState(p)
	if err != nil {
		t.Fatalf("good header: %v", err)
	}
	defer f.Close()
	head := make([]byte, 4)
	f.Read(head)
	if string(head) != "QEVM" {
		t.Fatal("openState did not rewind")
	}
}

func TestIsOurVMM(t *testing.T) {
	spec := hypervisor.Spec{ID: "abc", Dir: "/data/instances/abc"}
	argv := append([]string{"qemu-system-x86_64"}, buildArgs(hypervisor.Spec{ID: "abc", Dir: "/data/instances/abc", VCPUs: 1, MemoryBytes: 64 << 20}, driverState{Version: 1, Machine: "q35", Accel: "tcg"}, false)...)
	if !isOurVMM(argv, spec) {
		t.Fatal("our own argv not recognised")
	}
	if isOurVMM(argv, hypervisor.Spec{ID: "abc", Dir: "/other/instances/abc"}) {
		t.Fatal("a VMM of another data directory recognised as ours")
	}
	if isOurVMM(argv, hypervisor.Spec{ID: "abd", Dir: "/data/instances/abc"}) {
		t.Fatal("a VMM of another instance recognised as ours")
	}
}

func TestDiskFullIsResourceExhausted(t *testing.T) {
	for _, err := range []error{
		fmt.Errorf("write: %w", syscall.ENOSPC),
		errors.New("migration failed: Unable to write to file: No space left on device"),
	} {
		if got := diskFull(err); !errdefs.IsResourceExhausted(got) {
			t.Errorf("diskFull(%v) = %v, want ResourceExhausted", err, got)
		}
	}
	if got := diskFull(errors.New("other")); errdefs.IsResourceExhausted(got) {
		t.Error("an unrelated error classified as disk full")
	}
}

// TestDeviceArgs: disks and the NIC are part of the machine, so boot and
// restore name them identically (a fork's restore differs only by which
// TAP sits at tapFD and which files sit at the disk paths).
func TestDeviceArgs(t *testing.T) {
	tap, _ := os.Open(os.DevNull)
	defer tap.Close()
	spec := hypervisor.Spec{ID: "abc", Dir: "/data/instances/abc", VCPUs: 1, MemoryBytes: 256 << 20,
		Disks: []hypervisor.Disk{
			{Path: "root.img", ReadOnly: true, Serial: "zygote-root"},
			{Path: "/data/instances/abc/overlay,1.img", Serial: "zygote-overlay"},
		},
		NIC: &hypervisor.NIC{TAP: tap, MAC: "02:5a:79:67:00:02"}}
	for _, tc := range []struct {
		machine, bus string
		romfile      bool
	}{{"q35", "pci", true}, {"microvm", "device", false}} {
		st := driverState{Version: 1, Machine: tc.machine, Accel: "tcg"}
		boot := buildArgs(spec, st, false)
		restore := buildArgs(spec, st, true)
		if !reflect.DeepEqual(restore[:len(boot)], boot) {
			t.Errorf("%s: restore args differ from boot args", tc.machine)
		}
		joined := strings.Join(boot, " ")
		for _, want := range []string{
			"-drive file=/data/instances/abc/root.img,if=none,id=disk0,format=raw,cache=writeback,aio=threads,readonly=on",
			"-device virtio-blk-" + tc.bus + ",drive=disk0,serial=zygote-root",
			"-drive file=/data/instances/abc/overlay,,1.img,if=none,id=disk1,format=raw,cache=writeback,aio=threads,discard=unmap",
			"-device virtio-blk-" + tc.bus + ",drive=disk1,serial=zygote-overlay",
			"-netdev tap,id=net0,fd=3",
			"-device virtio-net-" + tc.bus + ",netdev=net0,mac=02:5a:79:67:00:02",
		} {
			if !strings.Contains(joined, want) {
				t.Errorf("%s: args lack %q:\n%s", tc.machine, want, joined)
			}
		}
		if strings.Contains(joined, "romfile=") != tc.romfile {
			t.Errorf("%s: romfile= present=%v", tc.machine, !tc.romfile)
		}
	}
	if got := stateFD(spec); got != 4 {
		t.Errorf("stateFD with a NIC = %d, want 4 (after the TAP)", got)
	}
	spec.NIC = nil
	if got := stateFD(spec); got != 3 {
		t.Errorf("stateFD without a NIC = %d, want 3", got)
	}
	if joined := strings.Join(buildArgs(spec, driverState{Version: 1, Machine: "q35", Accel: "tcg"}, false), " "); strings.Contains(joined, "netdev") {
		t.Errorf("no NIC, yet: %s", joined)
	}
}
