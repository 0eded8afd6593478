package hypervisor

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"time"
)

// Spec describes the machine a driver launches for one instance.
type Spec struct {
	// ID is the instance id; drivers use it to name the VMM process.
	ID string
	// Dir is the instance directory (see the package doc).
	Dir         string
	VCPUs       int
	MemoryBytes int64
	// KernelArgs are appended to the driver's own kernel command line.
	KernelArgs string
	// DriverState is what Boot returned for this machine (nil before the
	// first boot).
	DriverState json.RawMessage
	// Disks are the VM's block devices, in this order (the order is part
	// of the machine: a restore must pass the same disks, same order).
	Disks []Disk
	// NIC is the VM's network interface (nil: no network device). A restore
	// passes a NIC whenever the boot did, with the same MAC; its TAP may be
	// a different device (a fork's own slot).
	NIC *NIC
}

// Disk is a raw disk image the guest sees as a virtio block device.
type Disk struct {
	// Path is the image file: inside the instance directory (absolute, or
	// relative to Spec.Dir). A writable disk is the instance's own file; a
	// read-only one may be a hard link to an immutable file (an image's
	// root disk), which the driver never writes.
	Path string
	// ReadOnly makes the device read-only for the guest, and the VMM opens
	// the file read-only.
	ReadOnly bool
	// Serial is the virtio serial the guest finds the disk by
	// (/sys/block/vdX/serial): 1-20 characters of [A-Za-z0-9._-], unique
	// within the Spec.
	Serial string
}

// NIC is a network interface backed by a TAP device.
type NIC struct {
	// TAP is an open TAP device (IFF_TAP|IFF_NO_PI, opened by the network
	// slot). The driver hands it to the VMM process and does not close it:
	// the caller may close its copy once Boot or Restore returned. Boot and
	// every restore of one machine must open their TAPs with the same
	// flags (IFF_VNET_HDR or not): the saved device state depends on it.
	TAP *os.File
	// MAC is the guest's MAC address ("02:5a:79:67:00:02"), the same in
	// every restore of the machine.
	MAC string
}

// BootAssets are the guest kernel and initramfs a first boot copies into the
// instance directory.
type BootAssets struct {
	Kernel    string
	Initramfs string
}

// Process identifies a VMM process.
type Process struct {
	PID       int
	StartTime uint64
}

// SaveStats describes a SaveState call.
type SaveStats struct {
	StateBytes int64
	Duration   time.Duration
}

// Driver launches VMs.
type Driver interface {
	// Name is the hypervisor's name in the API ("qemu").
	Name() string
	// Boot starts a new VMM that boots the guest from scratch and returns
	// it with the driver state to persist.
	Boot(ctx context.Context, spec Spec, assets BootAssets) (VM, json.RawMessage, error)
	// Restore starts a VMM from the saved state in spec.Dir and returns it
	// running.
	Restore(ctx context.Context, spec Spec) (VM, error)
	// Attach adopts a VMM started by an earlier daemon. It fails with
	// errdefs.ErrNotFound when the process is gone or is not that VMM.
	Attach(ctx context.Context, spec Spec, proc Process) (VM, error)
	// Find returns the live VMM processes this driver started for spec.Dir
	// (normally zero or one): the reconcile uses it to adopt or kill VMMs
	// whose identity a crash kept out of the store.
	Find(spec Spec) ([]Process, error)
	// HasSavedState reports whether dir holds a saved state that Restore can
	// use.
	HasSavedState(dir string) bool
	// DiscardSavedState removes the saved state and memory, so the next
	// Boot starts from a clean, sparse memory file.
	DiscardSavedState(dir string) error
}

// VM is one running VMM.
type VM interface {
	Process() Process
	// Exited is closed when the VMM process has exited.
	Exited() <-chan struct{}
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// Paused reports whether the vCPUs are stopped.
	Paused(ctx context.Context) (bool, error)
	// SaveState writes the device state of a paused VM (see the package doc).
	SaveState(ctx context.Context) (SaveStats, error)
	// DialAgent connects to the guest agent's channel.
	DialAgent(ctx context.Context) (net.Conn, error)
	// Quit ends the VMM and waits until it has exited.
	Quit(ctx context.Context) error
	// Close releases the daemon's handles without stopping the VMM (the
	// daemon is shutting down; a later Attach adopts it again).
	Close() error
}

// MemoryFiler is implemented by drivers whose guest RAM is a file in the
// instance directory. The manager uses it to keep that file cheap to
// clone: in-place writes to blocks a fork shares split extents, and a
// reflink costs per extent.
type MemoryFiler interface {
	// MemoryFile is the path of the guest RAM file of the instance
	// directory dir; it lies inside dir.
	MemoryFile(dir string) string
}

// AcceleratorReporter is implemented by drivers that can tell, from the
// driver state Boot returned, which accelerator the VM runs on ("kvm",
// "tcg"). The manager shows it to clients; a driver without it shows none.
// It reads nothing but driverState (no process, no file).
type AcceleratorReporter interface {
	AcceleratorOf(driverState []byte) string
}

// Layout names the files every driver keeps in an instance directory that
// the rest of the daemon reads.
const (
	// ConsoleLog is the guest's serial console, appended across boots,
	// capped and rotated by internal/logfile ("console.1.log" holds the
	// previous file).
	ConsoleLog = "console.log"
	// VMMLog is the VMM process's own stdout and stderr, capped likewise.
	VMMLog = "vmm.log"
)
