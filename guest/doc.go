// Package guest owns what a zygote guest boots from: the kernel cache, the
// initramfs builder and the lookup of zygote-init. The agent itself lives in
// guest/initd (guest side), guest/agent (host client) and guest/agentproto
// (wire format).
//
// # Kernel cache
//
// FetchKernel downloads Debian's cloud kernel (the package that
// linux-image-cloud-amd64 depends on) with apt-get download, unpacks it
// with dpkg-deb -x (it is never installed as the host kernel) and stores
// <cache>/kernel/<version>/{vmlinux,vmlinuz,config,modules/*.ko,kernel.json}.
// An entry appears by renaming a complete directory and kernel.json is its
// last file, so readers never see half an entry; fetching a cached version
// downloads nothing. FindKernel returns the newest entry, or an
// errdefs.ErrNotFound error telling the user to run `zygote kernel fetch`.
//
// vmlinux is the bzImage's LZ4 payload decompressed (lz4 -dc): QEMU boots
// that ELF through its PVH note about 0.4 s faster under TCG. Kernel.BootImage
// picks it when the note is there, else the bzImage.
//
// Modules lists the modules the guest loads, in order; FetchKernel checks
// the order against each module's depends= and skips modules built into
// the kernel (modules.builtin). FilesystemModules (overlay; libcrc32c and
// erofs) are fetched too but loaded by zygote-init only when a Configure
// mounts that filesystem. An entry made before they existed is completed
// in place (new files first, then the manifest).
//
// # Overlay disks
//
// FormatOverlay makes an instance's writable overlay disk at create: a
// sparse file holding an empty ext4 (lazy inode tables and journal, so it
// costs a few MiB and tens of ms whatever its size), renamed into place.
//
// # Initramfs
//
// BuildInitramfs writes an uncompressed newc cpio (CpioWriter, no cpio
// binary): zygote-init as /init, a static busybox and its applet links,
// the modules, their order file and the per-filesystem module list at the
// paths agentproto names, and the directories init needs. The output is deterministic and cached under
// <cache>/initramfs/<hash of the inputs>.cpio.
//
// # Assets
//
// ResolveAssets is the daemon's one call at start: newest kernel,
// zygote-init (FindInitBinary: explicit path, next to the zygote binary,
// or /usr/local/lib/zygote/zygote-init) and the matching initramfs.
//
// Host tools: apt-get/apt-cache (apt), dpkg-deb (dpkg), lz4 (lz4), a
// static busybox (busybox-static), mkfs.ext4 (e2fsprogs). A missing one is an error naming the
// Debian package.
//
// Must never: install anything on the host, import instances, store, api
// or hypervisor.
package guest
