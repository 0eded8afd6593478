package clone

import (
	"context"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/cleanup"
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
func Densify(ctx context.Context, path string, opts Options) (ds DensifyStats, err error) {
	start := time.Now()
	r := newRun(opts)
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return ds, fmt.Errorf("clone: densify %s: %w", path, notFound(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ds, fsErr("stat", path, err)
	}
	if !fi.Mode().IsRegular() {
		return ds, fmt.Errorf("clone: densify %s: not a regular file: %w", path, errdefs.ErrInvalidArgument)
	}
	if ds.Before, err = layoutOf(f); err != nil {
		return ds, err
	}

	undo := cleanup.New()
	defer func() { _ = undo.Run(ctx) }()
	tmpPath, err := tempPath(path)
	if err != nil {
		return ds, err
	}
	tmp, err := os.OpenFile(tmpPath, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return ds, fsErr("create", tmpPath, err)
	}
	undo.Add("remove "+tmpPath, func(context.Context) error { tmp.Close(); return removeIfExists(tmpPath) })

	// copy_file_range would reflink on XFS and btrfs and keep every
	// fragment: the data must really be copied.
	res, err := r.sparseCopy(ctx, f, tmp, fi.Size(), &fsCaps{noCopyFileRange: true})
	if err != nil {
		return ds, err
	}
	if !r.opts.NoSync {
		if err := tmp.Sync(); err != nil {
			return ds, fsErr("fsync", tmpPath, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return ds, fmt.Errorf("clone: densify %s: %w", path, err)
	}
	if err := ficlone(f, tmp); err != nil {
		if reflinkUnsupported(err) {
			return ds, fmt.Errorf("clone: densify %s: needs a reflink filesystem (%s): %w (%w)", path, fsTypeOf(f), errdefs.ErrNotImplemented, err)
		}
		return ds, fsErr("reflink back", path, err)
	}
	if !r.opts.NoSync {
		if err := f.Sync(); err != nil {
			return ds, fsErr("fsync", path, err)
		}
	}
	if ds.After, err = layoutOf(f); err != nil {
		return ds, err
	}
	ds.CopiedBytes = res.copied
	ds.Duration = time.Since(start)
	r.log.Info("clone densify", "path", path, "extents_before", ds.Before.Extents, "extents_after", ds.After.Extents,
		"copied_bytes", ds.CopiedBytes, "duration", ds.Duration)
	return ds, nil
}
