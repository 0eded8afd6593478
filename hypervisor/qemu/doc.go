// Package qemu is the QEMU hypervisor driver: it builds QEMU's command
// line, talks QMP, parks a VM by migrating its device state to a file and
// restores it from there, and adopts the VMMs a previous daemon started.
//
// Guest RAM is memory-backend-file,share=on on the instance's own memory
// file, so the file is the VM's RAM and a standby migrates only device
// state (x-ignore-shared). A restore runs the boot's exact command line
// plus -incoming defer. The driver state (opaque to the manager) pins the
// machine type, accelerator and QEMU version at first boot.
//
// Boot gives each instance directory its own link to the guest kernel and
// initramfs (Config.ShareFile): the cached assets are immutable, so a hard
// link satisfies DESIGN invariant 1 without a copy per instance.
//
// The package never imports the store, the instance manager, the API or
// another driver; see README.md.
package qemu
