// Package volumes keeps named data disks under <data>/volumes: each volume
// is a sparse file holding an ext4 filesystem (<id>/volume.ext4) and its
// metadata (<id>/volume.json), created atomically (staged in tmp/, then
// renamed). Instances attach a volume by hard-linking its disk into their
// own directory (package instances); a writable attachment writes the
// volume's own inode, which is the point of a volume: its data outlives
// the instance.
//
// Contract:
//   - Create formats the disk (guest.FormatOverlay) and commits metadata and
//     disk with one rename: a crash leaves the volume complete or absent
//     (Open removes leftovers in tmp/).
//   - Get resolves an id or a unique name; names are unique.
//   - Delete refuses with errdefs.ErrConflict while Config.InUse names users
//     (the instances that attach it); otherwise the directory goes (the
//     disk survives in instance directories that still link it only if the
//     caller broke that rule).
//   - A full data disk is errdefs.ErrResourceExhausted; a bad name or size
//     errdefs.ErrInvalidArgument; an unknown volume errdefs.ErrNotFound.
//
// Never imports instances, api, store or drivers: attachments are the
// instance records' business, asked through Config.InUse.
//
// Concurrency: methods are safe for concurrent use (one mutex, a leaf
// lock; InUse is called with it held and must not call back).
package volumes
