package clone

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
)

const (
	// cfrChunk bounds one copy_file_range call, so a cancelled context is
	// seen within about one chunk of work.
	cfrChunk = 64 << 20
	// rwBuffer is the read/write fallback's buffer.
	rwBuffer = 1 << 20
)

// devPair keys what a run learned about copying from one filesystem to
// another: the fallback is decided per filesystem, not retried per file.
type devPair struct{ src, dst uint64 }

// fsCaps is what a run learned about one pair of filesystems.
type fsCaps struct {
	noReflink, noCopyFileRange bool
	reflinkErr                 error // why FICLONE was refused
}

// run is the state of one Dir, File or Densify call.
type run struct {
	opts  Options
	log   *slog.Logger
	caps  map[devPair]*fsCaps
	used  map[Strategy]bool
	stats Stats
	buf   []byte
	// unsynced lists what the call created, in creation order, for
	// syncAll.
	unsynced []string
}

func newRun(opts Options) *run {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.Skip == nil {
		opts.Skip = DefaultSkip
	}
	return &run{opts: opts, log: log, caps: map[devPair]*fsCaps{}, used: map[Strategy]bool{}}
}

// fileResult is what copying one file's data did.
type fileResult struct {
	strategy      Strategy
	copied, holes int64
}

// cloneFile copies the regular file srcPath to dstPath, which must not
// exist: data (reflink first), mode, owner, fsync. On error dstPath may
// exist; the caller's undo removes it with the staging area.
func (r *run) cloneFile(ctx context.Context, srcPath, dstPath string) (err error) {
	src, err := os.OpenFile(srcPath, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fsErr("open source", srcPath, err)
	}
	defer src.Close()
	var sst unix.Stat_t
	if err := unix.Fstat(int(src.Fd()), &sst); err != nil {
		return fsErr("stat", srcPath, err)
	}
	if sst.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("clone %s: not a regular file: %w", srcPath, errdefs.ErrInvalidArgument)
	}
	dst, err := os.OpenFile(dstPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fsErr("create", dstPath, err)
	}
	defer func() {
		if cerr := dst.Close(); cerr != nil && err == nil {
			err = fsErr("close", dstPath, cerr)
		}
	}()
	var dstat unix.Stat_t
	if err := unix.Fstat(int(dst.Fd()), &dstat); err != nil {
		return fsErr("stat", dstPath, err)
	}
	res, err := r.copyData(ctx, src, dst, srcPath, sst, dstat.Dev)
	if err != nil {
		return err
	}
	if sst.Uid != dstat.Uid || sst.Gid != dstat.Gid {
		if err := unix.Fchown(int(dst.Fd()), int(sst.Uid), int(sst.Gid)); err != nil {
			return fsErr("chown", dstPath, err)
		}
	}
	// After chown, which clears set-id bits.
	if err := unix.Fchmod(int(dst.Fd()), sst.Mode&0o7777); err != nil {
		return fsErr("chmod", dstPath, err)
	}
	r.unsynced = append(r.unsynced, dstPath)
	if res.strategy == StrategyReflink || res.copied > 0 {
		// A file without data copies the same on every path: it does not
		// tell which one the filesystem pair takes.
		r.used[res.strategy] = true
	}
	r.stats.Files++
	r.stats.Bytes += sst.Size
	if res.strategy == StrategyReflink {
		r.stats.ReflinkedBytes += sst.Size
	}
	r.stats.CopiedBytes += res.copied
	r.stats.HoleBytes += res.holes
	r.log.Debug("cloned file", "src", srcPath, "dst", dstPath, "clone_strategy", res.strategy, "bytes", sst.Size, "copied_bytes", res.copied)
	return nil
}

// copyData fills dst with src's content: FICLONE where the filesystem pair
// allows it, else (unless strict) a sparse copy.
func (r *run) copyData(ctx context.Context, src, dst *os.File, srcPath string, sst unix.Stat_t, dstDev uint64) (fileResult, error) {
	key := devPair{src: sst.Dev, dst: dstDev}
	caps := r.caps[key]
	if caps == nil {
		caps = &fsCaps{}
		r.caps[key] = caps
	}
	reflinkErr := caps.reflinkErr
	if !caps.noReflink {
		err := ficlone(dst, src)
		if err == nil {
			return fileResult{strategy: StrategyReflink}, nil
		}
		if !reflinkUnsupported(err) {
			return fileResult{}, fsErr("reflink", srcPath, err)
		}
		reflinkErr = err
		// EINVAL can be one file's problem (btrfs nodatasum mismatch);
		// the others say the filesystem pair cannot reflink at all.
		if !errors.Is(err, unix.EINVAL) {
			caps.noReflink, caps.reflinkErr = true, err
			r.log.Warn("reflink unavailable, falling back to a sparse copy", "src", srcPath,
				"src_fs", fsTypeOf(src), "dst_fs", fsTypeOf(dst), "error", err, "strict", r.opts.Strict)
		}
	}
	if r.opts.Strict {
		return fileResult{}, &ReflinkRequiredError{Path: srcPath, SrcFilesystem: fsTypeOf(src), DstFilesystem: fsTypeOf(dst), Err: reflinkErr}
	}
	return r.sparseCopy(ctx, src, dst, sst.Size, caps)
}

// ficlone clones src's whole content into dst (FICLONE), retrying EINTR.
func ficlone(dst, src *os.File) error {
	for {
		err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}

// reflinkUnsupported says whether a FICLONE error means "this filesystem
// (pair) cannot reflink", as opposed to a real failure such as ENOSPC or
// EIO that must not be papered over by a copy.
func reflinkUnsupported(err error) bool {
	for _, e := range []error{unix.EOPNOTSUPP, unix.EXDEV, unix.ENOTTY, unix.ENOSYS, unix.EINVAL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// sparseCopy sizes dst like src and copies only src's data segments
// (SEEK_DATA/SEEK_HOLE), so holes, trailing ones included, stay holes.
func (r *run) sparseCopy(ctx context.Context, src, dst *os.File, size int64, caps *fsCaps) (fileResult, error) {
	if err := dst.Truncate(size); err != nil {
		return fileResult{}, fsErr("truncate", dst.Name(), err)
	}
	res := fileResult{strategy: StrategyCopyFileRange}
	if caps.noCopyFileRange {
		res.strategy = StrategyReadWrite
	}
	err := forEachData(src, size, func(start, end int64) error {
		for pos := start; pos < end; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n, s, err := r.copyChunk(src, dst, pos, min(end-pos, cfrChunk), caps)
			if err != nil {
				return err
			}
			if s == StrategyReadWrite {
				res.strategy = StrategyReadWrite
			}
			pos += n
			res.copied += n
		}
		return nil
	})
	if err != nil {
		return fileResult{}, err
	}
	res.holes = size - res.copied
	return res, nil
}

// forEachData calls fn for each data segment [start, end) of f below size,
// in order. A filesystem without SEEK_DATA reports the whole file as data.
func forEachData(f *os.File, size int64, fn func(start, end int64) error) error {
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if errors.Is(err, unix.EINVAL) {
			return fn(off, size)
		}
		if err != nil {
			return fsErr("seek data", f.Name(), err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fsErr("seek hole", f.Name(), err)
		}
		hole = min(hole, size)
		if data >= hole {
			return nil
		}
		if err := fn(data, hole); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyChunk copies up to n bytes at pos (same offset on both sides) with
// copy_file_range, or pread/pwrite once the filesystem pair refused it.
// It returns how much it copied and how.
func (r *run) copyChunk(src, dst *os.File, pos, n int64, caps *fsCaps) (int64, Strategy, error) {
	if !caps.noCopyFileRange {
		roff, woff := pos, pos
		got, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(n), 0)
		switch {
		case err == nil && got > 0:
			return int64(got), StrategyCopyFileRange, nil
		case err == nil:
			return 0, "", fmt.Errorf("copy %s: source shrank during the copy (EOF at %d): %w", src.Name(), pos, errdefs.ErrConflict)
		case errors.Is(err, unix.EINTR):
			return 0, StrategyCopyFileRange, nil
		case !copyFileRangeUnsupported(err):
			return 0, "", fsErr("copy_file_range", dst.Name(), err)
		}
		caps.noCopyFileRange = true
		r.log.Debug("copy_file_range refused, using read/write", "src", src.Name(), "error", err)
	}
	if r.buf == nil {
		r.buf = make([]byte, rwBuffer)
	}
	buf := r.buf[:min(n, rwBuffer)]
	got, err := src.ReadAt(buf, pos)
	if got == 0 && err != nil {
		return 0, "", fmt.Errorf("copy %s at %d: %w (source shrank during the copy?)", src.Name(), pos, err)
	}
	if _, err := dst.WriteAt(buf[:got], pos); err != nil {
		return 0, "", fsErr("write", dst.Name(), err)
	}
	return int64(got), StrategyReadWrite, nil
}

// copyFileRangeUnsupported says whether copy_file_range refused the pair of
// files (another filesystem, an old kernel) rather than failed.
func copyFileRangeUnsupported(err error) bool {
	for _, e := range []error{unix.EXDEV, unix.EOPNOTSUPP, unix.ENOSYS, unix.EINVAL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// fsErr wraps a filesystem error with the operation and path, and adds
// errdefs.ErrResourceExhausted when the disk or quota is full.
func fsErr(op, path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err // the path is in our message already
	}
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("clone: %s %s: %w (%w)", op, path, errdefs.ErrResourceExhausted, err)
	}
	return fmt.Errorf("clone: %s %s: %w", op, path, err)
}
