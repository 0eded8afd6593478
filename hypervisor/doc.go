// Package hypervisor is the contract between the instance manager and the
// programs that run VMs (QEMU, Firecracker). The manager sees only this
// package; only cmd/zygote names the drivers.
//
// # Vocabulary
//
//   - instance directory (Spec.Dir): the one directory a driver reads and
//     writes for a VM. Every file the VM needs lives there (DESIGN
//     invariant 1): guest RAM (the memory file), the saved device state,
//     the kernel and initramfs copies, the console log, control sockets.
//     A driver never reads or writes outside it, except the boot assets it
//     copies in on the first boot.
//   - driver state: bytes the driver returns at Boot that pin the machine
//     description (machine type, accelerator, CPU model). The manager
//     persists them without reading them and passes them back to Restore
//     and Attach, so a restore reproduces the machine exactly.
//   - VMM process identity (Process): pid plus start time, so a restarted
//     daemon never mistakes a reused pid for its VMM.
//   - disks (Spec.Disks): raw files inside the instance directory, each
//     with a mode and a virtio serial the guest finds it by. Writable
//     disks are the instance's own files (copied with the memory file at
//     fork and snapshot); a read-only disk may be a hard link to an
//     immutable file (an image's root disk) the driver only reads. A disk
//     path outside the instance directory is refused (CheckDevices).
//   - NIC (Spec.NIC): an already-open TAP handed to the VMM, and a MAC.
//     The disks (serials, modes, order) and the NIC's presence and MAC
//     are part of the machine: Restore must pass the same ones
//     (DeviceSignature; a driver stores it with the saved state and
//     refuses another with errdefs.ErrInvalidState, QEMU in
//     state.devices); the files and the TAP behind them may differ (a
//     fork's own copies, its own network slot).
//
// # Disk durability
//
// Pause returns only when every write the guest submitted to a writable
// disk is in the disk file and flushed to it (QEMU: stop drains and
// fdatasyncs; cache=writeback, no user-space cache). So while a VM is
// paused its disk files and memory file together are one consistent
// image, which fork and snapshot copy. Writes still in the guest's own
// page cache live in guest RAM, the memory file, not in the disk file.
//
// # Lifecycle
//
//		Boot ─────────────► running ──Pause──► paused ──SaveState──► saved
//		                      ▲   ◄──Resume───┘                        │
//		Restore(saved dir) ───┘                              Quit ◄────┘
//		Attach(live process) ─► running or paused
//
//	  - Boot starts a VMM that boots the guest from the kernel and initramfs.
//	  - Pause stops the vCPUs; guest memory stops changing.
//	  - SaveState is legal only on a paused VM. It writes the device state
//	    into the instance directory and returns only when the state file and
//	    the memory file are durable (fsynced). It never copies guest memory:
//	    the memory file is the guest's RAM.
//	  - Restore starts a VMM from a saved directory and returns it running.
//	    Once the guest runs, the saved state no longer matches the memory
//	    file, so Restore consumes the state file before resuming: a crash
//	    after that point leaves a running VM or a stopped instance, never a
//	    stale standby image. A missing or corrupt state file is a clear error
//	    and leaves every file in place.
//	  - Quit ends the VMM (the guest is not asked to shut down; the manager
//	    does that through the guest agent first) and waits for it to exit.
//
// Optional capabilities are separate interfaces checked by type assertion,
// declared here and covered by drivertest.Suite for every driver that
// implements them; the manager never asserts an undeclared interface:
//   - MemoryFiler: the guest RAM is a file in the instance directory (the
//     manager densifies it after a standby; without it, no densify);
//   - AcceleratorReporter: which accelerator a driver state names (shown
//     to clients; without it, none is shown);
//   - MemorySharer: forks may share one immutable memory file (hard
//     links, Spec.SharedMemory); without it every fork owns a copy;
//   - MemoryUsageReporter (on a VM): shared and private resident guest
//     RAM; without it /metrics has no per-instance memory figures.
//
// An operation that needs a capability the driver lacks fails with
// errdefs.ErrNotImplemented in one place.
//
// # Concurrency
//
// A VM's methods may be called from several goroutines, but the manager
// serialises lifecycle calls for one instance under its per-instance lock;
// drivers take only leaf locks of their own.
package hypervisor
