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
	// SharedMemory runs the guest on its memory file as a private
	// (copy-on-write) mapping, for a memory file that is, or may become, a
	// hard link shared with other instances (MemorySharer). The VMM never
	// writes the file; the guest's writes live in the VMM's anonymous
	// memory until SaveState puts them in the state file. Without it the
	// memory file is the guest's RAM, written in place, and the driver
	// refuses to run on a file with more than one link. Boot ignores it: a
	// boot starts a fresh memory file of its own.
	SharedMemory bool
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
	// DirtyBytes is, for a VM running with Spec.SharedMemory, the guest
	// RAM the state file carries: the pages the guest wrote.
	DirtyBytes int64
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

// MemorySharer is implemented by drivers whose forks can share one
// immutable memory file (DESIGN §3 "Memory sharing"): N forks of a parked
// VM then cost one page cache instead of N copies of guest RAM.
//
// The rule that keeps invariants 1, 2 and 4: a memory file with more than
// one link is immutable. Nobody writes it in place, maps it writable-
// shared, discards into it or rewrites its extents; the instances that
// hold it run with Spec.SharedMemory (a private mapping). Whoever would
// write it first breaks the link (OwnMemory) and writes its own copy.
//
//   - LinkMemory makes dst's memory file a hard link of src's, replacing
//     whatever memory file dst had, atomically (link to a temporary, then
//     rename): a crash leaves dst's old file or the link, plus at most a
//     temporary named like the clone package's (swept at start).
//   - OwnMemory makes dir's memory file the instance's own inode: when it
//     has more than one link it is replaced by an identical copy (reflink-
//     first, fsynced, renamed over it), which the other links never see.
//     It reports whether it copied. A crash leaves the shared link or the
//     own copy, both restorable.
//   - MemoryLinks reports the memory file's inode identity (the sharing
//     group: "<dev>:<ino>") and its link count; links 0 when there is no
//     memory file.
//
// SaveState of a VM running with SharedMemory writes the guest's own
// writes (the pages it copied on write) into the state file, never into
// the memory file, so its standby image is the shared base plus its own
// delta, and Restore with or without SharedMemory loads that delta back.
type MemorySharer interface {
	LinkMemory(srcDir, dstDir string) error
	OwnMemory(ctx context.Context, dir string) (copied bool, err error)
	MemoryLinks(dir string) (group string, links int, err error)
}

// MemoryUsage is what a running VM's guest RAM costs the host now.
type MemoryUsage struct {
	// SharedBytes is resident guest RAM read from a memory file other VMs
	// may map too (the page cache of a shared file: a VM running with
	// Spec.SharedMemory).
	SharedBytes int64
	// PrivateBytes is resident guest RAM only this VM holds: a sharing
	// VM's own (copied-on-write) pages, an owning VM's resident RAM.
	PrivateBytes int64
}

// MemoryUsageReporter is implemented by VMs that can tell what their guest
// RAM costs (the manager exports it per instance in /metrics).
type MemoryUsageReporter interface {
	MemoryUsage() (MemoryUsage, error)
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
