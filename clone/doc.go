// Package clone makes the copies every snapshot and fork is built from:
// a directory tree (Dir) or one file (File), reflink first.
//
// # Copy semantics (DESIGN.md invariant 3)
//
// The copy is byte-identical to the source, made of new inodes, and owns
// everything it holds: writing either side never changes the other. Each
// regular file takes the first path its pair of filesystems allows:
//
//  1. reflink: FICLONE shares the source's extents copy-on-write. It costs
//     time in proportion to the file's extent count, not its size
//     (XFS with -m reflink=1, btrfs).
//  2. copy_file_range: the source's data segments, found with
//     SEEK_DATA/SEEK_HOLE, copied in the kernel; holes are not read or
//     written (ext4, tmpfs).
//  3. readwrite: the same segments with pread/pwrite, when the kernel
//     refuses copy_file_range (source and copy on different filesystems).
//
// A filesystem pair that refuses FICLONE (EOPNOTSUPP, EXDEV, ...) is not
// asked again within the call. Paths 2 and 3 size the copy first, so holes,
// trailing ones included, stay holes and the size is equal. Stats.Strategy
// says which path the data took ("mixed" when files differed), the log line
// carries it as clone_strategy, and the caller exports it as a metric.
//
// Strict mode (Options.Strict; the daemon sets it from its configuration
// or ZYGOTE_REFLINK_STRICT=1 via StrictFromEnv) refuses paths 2 and 3: the
// call fails with *ReflinkRequiredError, which matches
// errdefs.ErrNotImplemented, names the file and filesystems, and says how
// to fix it.
//
// Cloner binds one Options value to Dir, File and PrepareDensify: the
// daemon builds one from its configuration and hands it to every caller,
// so no copy runs with options of its own.
//
// # What Dir copies
//
// Directories, regular files and symlinks, with modes and owners
// (timestamps, xattrs and hard links between files are not kept: each link
// becomes its own file). Symlinks are recreated, not followed; an absolute
// target inside the source tree is rewritten into the copy. Options.Skip
// (default DefaultSkip) leaves out sockets, named pipes, *.pid, *.log,
// *.sock and this package's temporaries; any other special file is an
// error.
//
// # Atomicity and durability
//
// The destination must not exist (File, Dir) or be an empty directory
// (Dir): nothing is ever overwritten (errdefs.ErrAlreadyExists). The copy is
// built in a hidden sibling (".<name>.zygote-tmp-<random>", see
// IsTempName), every file and directory is fsynced (unless Options.NoSync),
// then it is renamed into place and the parent is fsynced: after a crash
// the destination is complete or absent, and at most a temporary is left
// for the daemon's reconcile to remove. On any error, cancellation included,
// whatever the call created is removed before it returns. A full disk is an
// error matching errdefs.ErrResourceExhausted.
//
// # Concurrency
//
// Calls are independent and may run concurrently on different
// destinations. The source must not change during a call: a running VM is
// paused (or in standby) while its memory file is copied. The package never
// writes to the source.
//
// # Fork chains
//
// Writing a reflinked file in place splits its extents; a chain of forks
// that each dirty memory makes every later reflink slower (about 25 µs per
// extent on XFS here). FileLayout counts extents against data segments and
// says when a file is Fragmented; Densify rewrites a file its owner holds
// still into fresh extents, off the fork's path, and only a file that its
// path is the one link of (never a hard-linked, shared file). README.md has the
// measurements, and the price (a background rewrite, unshared blocks).
package clone
