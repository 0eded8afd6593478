package clone

import (
	"context"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
)

// FIEMAP, declared by hand: x/sys/unix does not have it.
const (
	fsIocFiemap    = 0xC020660B // _IOWR('f', 11, struct fiemap)
	fiemapFlagSync = 0x1        // flush dirty data before mapping
)

// fiemap is struct fiemap without its trailing extent array: with
// fm_extent_count 0 the kernel only counts (fm_mapped_extents).
type fiemap struct {
	start, length         uint64
	flags, mappedExtents  uint32
	extentCount, reserved uint32
}

// FileLayout returns the Layout of the file at path (after flushing its
// dirty pages). Filesystems without FIEMAP (tmpfs) give an error matching
// errdefs.ErrNotImplemented.
func FileLayout(path string) (Layout, error) {
	f, err := os.Open(path)
	if err != nil {
		return Layout{}, fmt.Errorf("clone: layout %s: %w", path, notFound(err))
	}
	defer f.Close()
	return layoutOf(f)
}

func layoutOf(f *os.File) (Layout, error) {
	var l Layout
	n, err := extentsOf(f)
	if err != nil {
		return l, err
	}
	l.Extents = n
	fi, err := f.Stat()
	if err != nil {
		return l, fsErr("stat", f.Name(), err)
	}
	err = forEachData(f, fi.Size(), func(int64, int64) error { l.DataSegments++; return nil })
	return l, err
}

func extentsOf(f *os.File) (int, error) {
	fm := fiemap{length: ^uint64(0), flags: fiemapFlagSync}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&fm)))
	switch {
	case errno == unix.EOPNOTSUPP || errno == unix.ENOTTY:
		return 0, fmt.Errorf("clone: extents %s: FIEMAP on %s: %w (%w)", f.Name(), fsTypeOf(f), errdefs.ErrNotImplemented, errno)
	case errno != 0:
		return 0, fsErr("fiemap", f.Name(), errno)
	}
	return int(fm.mappedExtents), nil
}

// Densify rewrites the file at path into fresh, contiguous extents, so the
// next reflink copy of it is cheap again (see README: fork chains). Content,
// size, holes, inode, mode and owner are unchanged; blocks it shared with
// other files (its ancestors in a fork chain) become its own, which costs
// disk space. It copies the data (holes are skipped) to a temporary file
// next to path, then clones that back over path with FICLONE and removes
// it.
//
// Preconditions: the caller owns the file (invariant 4) and nothing writes
// it during the call (the VM is in standby or stopped). Because the
// temporary holds the same bytes, every state a crash can leave (the
// remap goes extent by extent) reads the same content; the temporary is
// named so IsTempName finds it. Cancelling ctx before the swap leaves the
// file as it was. Needs a reflink filesystem; elsewhere the error matches
// errdefs.ErrNotImplemented (and there is nothing to densify: a copy made
// without reflink is already dense).
func Densify(ctx context.Context, path string, opts Options) (DensifyStats, error) {
	d, err := PrepareDensify(ctx, path, opts)
	if err != nil {
		return DensifyStats{}, err
	}
	return d.Commit(ctx)
}

// Densified is a dense copy of a file, prepared by PrepareDensify and not
// yet swapped in. Exactly one of Commit or Abort must be called.
type Densified struct {
	path  string
	f     *os.File
	tmp   *os.File
	r     *run
	stats DensifyStats
	start time.Time
}

// PrepareDensify does the slow half of Densify: it copies the data of path
// (holes skipped) into a temporary beside it. Nothing about path changes;
// the caller may release its exclusion meanwhile, as long as it knows,
// before Commit, whether the file was written since (if it was, Abort).
func PrepareDensify(ctx context.Context, path string, opts Options) (_ *Densified, err error) {
	d := &Densified{path: path, r: newRun(opts), start: time.Now()}
	d.f, err = os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("clone: densify %s: %w", path, notFound(err))
	}
	defer func() {
		if err != nil {
			d.Abort()
		}
	}()
	fi, err := d.f.Stat()
	if err != nil {
		return nil, fsErr("stat", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("clone: densify %s: not a regular file: %w", path, errdefs.ErrInvalidArgument)
	}
	if d.stats.Before, err = layoutOf(d.f); err != nil {
		return nil, err
	}
	tmpPath, err := tempPath(path)
	if err != nil {
		return nil, err
	}
	if d.tmp, err = os.OpenFile(tmpPath, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600); err != nil {
		return nil, fsErr("create", tmpPath, err)
	}
	// copy_file_range would reflink on XFS and btrfs and keep every
	// fragment: the data must really be copied.
	res, err := d.r.sparseCopy(ctx, d.f, d.tmp, fi.Size(), &fsCaps{noCopyFileRange: true})
	if err != nil {
		return nil, err
	}
	if !d.r.opts.NoSync {
		if err := d.tmp.Sync(); err != nil {
			return nil, fsErr("fsync", tmpPath, err)
		}
	}
	d.stats.CopiedBytes = res.copied
	return d, ctx.Err()
}

// Commit clones the prepared copy over the file (fast: one remap per data
// segment) and removes the temporary. Preconditions: the file has not been
// written since PrepareDensify, and nothing writes it now. It refuses
// (errdefs.ErrConflict) a file that is no longer path's one and only link:
// a file another name links may be immutable to its other holders (a
// sharing fork's memory file), and a path renamed over since names a file
// this densify never read.
func (d *Densified) Commit(ctx context.Context) (ds DensifyStats, err error) {
	defer d.Abort()
	if err := ctx.Err(); err != nil {
		return ds, fmt.Errorf("clone: densify %s: %w", d.path, err)
	}
	if err := d.soleLink(); err != nil {
		return ds, err
	}
	if err := ficlone(d.f, d.tmp); err != nil {
		if reflinkUnsupported(err) {
			return ds, fmt.Errorf("clone: densify %s: needs a reflink filesystem (%s): %w (%w)", d.path, fsTypeOf(d.f), errdefs.ErrNotImplemented, err)
		}
		return ds, fsErr("reflink back", d.path, err)
	}
	if !d.r.opts.NoSync {
		if err := d.f.Sync(); err != nil {
			return ds, fsErr("fsync", d.path, err)
		}
	}
	ds = d.stats
	if ds.After, err = layoutOf(d.f); err != nil {
		return ds, err
	}
	ds.Duration = time.Since(d.start)
	d.r.log.Info("clone densify", "path", d.path, "extents_before", ds.Before.Extents, "extents_after", ds.After.Extents,
		"copied_bytes", ds.CopiedBytes, "duration", ds.Duration)
	return ds, nil
}

// soleLink checks that the prepared file is still path, with one link.
func (d *Densified) soleLink() error {
	if d.f == nil {
		return fmt.Errorf("clone: densify %s: aborted", d.path)
	}
	var held, named unix.Stat_t
	if err := unix.Fstat(int(d.f.Fd()), &held); err != nil {
		return fsErr("stat", d.path, err)
	}
	if err := unix.Lstat(d.path, &named); err != nil || named.Dev != held.Dev || named.Ino != held.Ino {
		return fmt.Errorf("clone: densify %s: the path names another file than the one prepared: %w", d.path, errdefs.ErrConflict)
	}
	if held.Nlink != 1 {
		return fmt.Errorf("clone: densify %s: the file has %d links; a linked file is never rewritten: %w", d.path, held.Nlink, errdefs.ErrConflict)
	}
	return nil
}

// Abort drops the prepared copy; the file is untouched. Safe to call twice
// and after Commit.
func (d *Densified) Abort() {
	if d.tmp != nil {
		name := d.tmp.Name()
		d.tmp.Close()
		removeIfExists(name)
		d.tmp = nil
	}
	if d.f != nil {
		d.f.Close()
		d.f = nil
	}
}
