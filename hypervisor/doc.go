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
//     to clients; without it, none is shown).
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
