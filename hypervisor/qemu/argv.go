package qemu

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/zygote/zygote/guest/agentproto"
	"github.com/zygote/zygote/hypervisor"
)

// Files the QEMU driver keeps in an instance directory.
const (
	memoryFile  = "memory"        // guest RAM, memory-backend-file share=on (share=off when shared: sharing.go)
	stateFile   = "state"         // device state saved by SaveState
	devicesFile = "state.devices" // hypervisor.DeviceSignature of the saved state
	// stateRAMFile marks a state whose stream carries RAM pages (saved
	// from a private mapping: sharing.go).
	stateRAMFile = "state.ram"
	kernelFile   = "kernel"    // the instance's own copy of the guest kernel
	initrdFile   = "initramfs" // and of the initramfs
	qmpSocket    = "qmp.sock"
	agentSocket  = "agent.sock"
)

// AgentPortName is the virtio-serial port name the guest agent looks for.
const AgentPortName = agentproto.AgentPortName

// maxUnixPath is sun_path's size minus the terminating NUL.
const maxUnixPath = 107

// baseKernelArgs: ttyS0 is drained into console.log (console.go);
// panic=-1 reboots at once, and -no-reboot turns a reboot into a VMM exit,
// so a dead guest never lingers.
const baseKernelArgs = "console=ttyS0 quiet panic=-1"

// optEscape doubles commas, QEMU's option separator, in a value.
func optEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

func processName(id string) string { return "zygote-" + id }

// buildArgs returns the QEMU command line for spec. Boot and restore use the
// same function, so a restore can only differ from the boot by the
// incoming flags: QEMU requires the same machine, devices and RAM layout.
func buildArgs(spec hypervisor.Spec, st driverState, incoming bool) []string {
	dir := spec.Dir
	mib := spec.MemoryBytes >> 20
	bus := "pci"
	if st.Machine == "microvm" {
		bus = "device" // virtio-mmio transports
	}
	cmdline := baseKernelArgs
	if st.Machine == "microvm" && st.Accel == "tcg" && st.TSCKHz > 0 {
		cmdline += fmt.Sprintf(" tsc_early_khz=%d", st.TSCKHz)
	}
	if spec.KernelArgs != "" {
		cmdline += " " + spec.KernelArgs
	}
	// share=off maps the memory file privately (sharing.go): the guest's
	// writes never reach it. Only a restore can share: a boot starts a
	// fresh file of its own.
	share := "on"
	if sharedRAM(spec, incoming) {
		share = "off"
	}
	args := []string{
		"-name", processName(spec.ID),
		"-machine", fmt.Sprintf("%s,accel=%s,memory-backend=ram0", st.Machine, st.Accel),
		"-smp", fmt.Sprint(spec.VCPUs),
		"-m", fmt.Sprintf("%dM", mib),
		"-object", fmt.Sprintf("memory-backend-file,id=ram0,size=%dM,mem-path=%s,share=%s", mib, optEscape(filepath.Join(dir, memoryFile)), share),
		"-kernel", filepath.Join(dir, kernelFile),
		"-initrd", filepath.Join(dir, initrdFile),
		"-append", cmdline,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-device", "virtio-serial-" + bus + ",id=vser0",
		"-chardev", fmt.Sprintf("socket,id=agent0,path=%s,server=on,wait=off", optEscape(filepath.Join(dir, agentSocket))),
		"-device", "virtserialport,bus=vser0.0,chardev=agent0,name=" + AgentPortName,
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng-" + bus + ",rng=rng0",
		"-qmp", fmt.Sprintf("unix:%s,server=on,wait=off", optEscape(filepath.Join(dir, qmpSocket))),
	}
	args = append(args, deviceArgs(spec, bus)...)
	args = append(args, consoleArgs(dir)...)
	if incoming {
		// -S: stay paused after the state loads, so the driver consumes the
		// state file before the guest runs (see hypervisor's package doc).
		args = append(args, "-incoming", "defer", "-S")
	}
	return args
}

// tapFD is the descriptor number of the NIC's TAP in the VMM process
// (exec.Cmd.ExtraFiles[0]); the saved state, when restoring, follows it.
// Fixed, so a restore's command line names the same fd as the boot's.
const tapFD = 3

// stateFD is the descriptor number of the state file during a restore.
func stateFD(spec hypervisor.Spec) int {
	if spec.NIC != nil {
		return tapFD + 1
	}
	return tapFD
}

// deviceArgs returns the disks and the NIC. Every writable disk uses
// cache=writeback: QEMU keeps no cache of its own for raw files (writes
// go to the host page cache with pwrite), and a flush request, QMP stop
// (vm_stop drains and flushes every block device) and quit fdatasync the
// file. So once Pause returns, every write the guest submitted is in the
// disk file and a copy of it is consistent with the memory file.
// discard=unmap lets the guest's fstrim punch holes: disks stay sparse.
func deviceArgs(spec hypervisor.Spec, bus string) []string {
	var args []string
	for i, d := range spec.Disks {
		opts := fmt.Sprintf("file=%s,if=none,id=disk%d,format=raw,cache=writeback,aio=threads", optEscape(spec.DiskPath(d)), i)
		if d.ReadOnly {
			opts += ",readonly=on"
		} else {
			opts += ",discard=unmap"
		}
		args = append(args, "-drive", opts,
			"-device", fmt.Sprintf("virtio-blk-%s,drive=disk%d,serial=%s", bus, i, d.Serial))
	}
	if n := spec.NIC; n != nil {
		// romfile= (none): no option ROM, which a direct kernel boot never
		// runs and whose size would otherwise tie the saved state to the
		// QEMU package's ROM files.
		dev := fmt.Sprintf("virtio-net-%s,netdev=net0,mac=%s", bus, n.MAC)
		if bus == "pci" {
			dev += ",romfile="
		}
		args = append(args, "-netdev", fmt.Sprintf("tap,id=net0,fd=%d", tapFD), "-device", dev)
	}
	return args
}

// checkPaths fails early, with a clear message, when a socket path would
// not fit in a sockaddr_un.
func checkPaths(dir string) error {
	for _, name := range []string{qmpSocket, agentSocket, consoleSocket} {
		if p := filepath.Join(dir, name); len(p) > maxUnixPath {
			return fmt.Errorf("socket path %s is %d bytes, over the %d-byte unix socket limit: use a shorter data directory", p, len(p), maxUnixPath)
		}
	}
	return nil
}
