package clone

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/cleanup"
)

// Dir copies the tree at src to dst, reflink first. dst must not exist, or
// be an empty directory; its parent must exist. The copy is built in a
// hidden staging directory next to dst (see IsTempName), made durable, and
// renamed into place, so dst appears complete or not at all, even across a
// crash. On error nothing of the copy is left behind.
//
// Regular files are cloned (see the package doc for the fallback), symlinks
// recreated (an absolute target inside src is rewritten to the same place
// inside dst, so the copy never points into its source), directories
// recreated; modes and owners are kept, timestamps and xattrs are not.
// Entries Options.Skip selects are left out. The source must not change
// during the copy (a running VM must be paused first).
func Dir(ctx context.Context, src, dst string, opts Options) (stats Stats, err error) {
	start := time.Now()
	r := newRun(opts)
	if src, err = filepath.Abs(src); err != nil {
		return stats, err
	}
	if dst, err = filepath.Abs(dst); err != nil {
		return stats, err
	}
	var srcInfo unix.Stat_t
	if err := unix.Stat(src, &srcInfo); err != nil {
		return stats, fmt.Errorf("clone %s: %w", src, notFound(err))
	}
	if srcInfo.Mode&unix.S_IFMT != unix.S_IFDIR {
		return stats, fmt.Errorf("clone %s: not a directory: %w", src, errdefs.ErrInvalidArgument)
	}
	if dst == src || strings.HasPrefix(dst, src+string(filepath.Separator)) {
		return stats, fmt.Errorf("clone %s to %s: the destination is inside the source: %w", src, dst, errdefs.ErrInvalidArgument)
	}
	dstExisted, err := emptyOrAbsent(dst)
	if err != nil {
		return stats, err
	}

	err = r.staged(ctx, dst, dstExisted, func(stage string) error {
		if err := os.Mkdir(stage, 0o700); err != nil {
			return fsErr("create staging directory", stage, err)
		}
		return r.copyDir(ctx, src, stage, ".", src, dst, srcInfo)
	})
	if err != nil {
		return stats, err
	}
	return r.finish("dir", src, dst, start), nil
}

// File copies the regular file src to dst, reflink first. dst must not
// exist; it appears complete (and durable) or not at all.
func File(ctx context.Context, src, dst string, opts Options) (stats Stats, err error) {
	start := time.Now()
	r := newRun(opts)
	fi, err := os.Lstat(src)
	if err != nil {
		return stats, fmt.Errorf("clone %s: %w", src, notFound(err))
	}
	if !fi.Mode().IsRegular() {
		return stats, fmt.Errorf("clone %s: not a regular file (%s): %w", src, fi.Mode().Type(), errdefs.ErrInvalidArgument)
	}
	if _, err := os.Lstat(dst); err == nil {
		return stats, fmt.Errorf("clone %s: %s exists: %w", src, dst, errdefs.ErrAlreadyExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return stats, fsErr("stat", dst, err)
	}

	err = r.staged(ctx, dst, false, func(stage string) error { return r.cloneFile(ctx, src, stage) })
	if err != nil {
		return stats, err
	}
	return r.finish("file", src, dst, start), nil
}

// staged has build create the copy at a fresh staging path next to dst,
// makes it durable, renames it to dst (replacing dst only if it is the
// empty directory the caller handed us) and syncs dst's parent. On error
// it removes whatever it and build created, dst included.
func (r *run) staged(ctx context.Context, dst string, replaceEmptyDir bool, build func(stage string) error) (err error) {
	undo := cleanup.New()
	defer func() {
		if err != nil {
			err = errors.Join(err, undo.Run(ctx))
		}
	}()
	stage, err := tempPath(dst)
	if err != nil {
		return err
	}
	undo.Add("remove staging "+stage, func(context.Context) error { return os.RemoveAll(stage) })
	if err := build(stage); err != nil {
		return err
	}
	if err := r.syncAll(); err != nil {
		return err
	}
	if err := renameInto(stage, dst, replaceEmptyDir); err != nil {
		return err
	}
	undo.Add("remove "+dst, func(context.Context) error {
		if err := os.RemoveAll(dst); err != nil || !replaceEmptyDir {
			return err
		}
		return os.Mkdir(dst, 0o700) // give the caller its empty directory back
	})
	if err := r.syncDir(filepath.Dir(dst)); err != nil {
		return err
	}
	undo.Release()
	return nil
}

// copyDir fills dstDir (already created) with srcDir's entries, then gives
// it srcDir's mode and owner and syncs it. rel is srcDir relative to the
// source root; srcRoot and dstRoot are the roots, for symlink rewriting.
func (r *run) copyDir(ctx context.Context, srcDir, dstDir, rel, srcRoot, dstRoot string, info unix.Stat_t) error {
	entries, err := os.ReadDir(srcDir)
	if err != nil {
		return fsErr("read directory", srcDir, err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("clone %s: %w", srcDir, err)
		}
		childRel := path.Join(rel, e.Name())
		if r.opts.Skip(childRel, e) {
			r.stats.Skipped++
			continue
		}
		srcPath, dstPath := filepath.Join(srcDir, e.Name()), filepath.Join(dstDir, e.Name())
		switch t := e.Type(); {
		case t.IsDir():
			var ci unix.Stat_t
			if err := unix.Lstat(srcPath, &ci); err != nil {
				return fsErr("stat", srcPath, err)
			}
			if err := os.Mkdir(dstPath, 0o700); err != nil {
				return fsErr("mkdir", dstPath, err)
			}
			if err := r.copyDir(ctx, srcPath, dstPath, childRel, srcRoot, dstRoot, ci); err != nil {
				return err
			}
		case t&fs.ModeSymlink != 0:
			if err := r.copySymlink(srcPath, dstPath, srcRoot, dstRoot); err != nil {
				return err
			}
		case t.IsRegular():
			if r.opts.LinkReadOnly {
				linked, err := linkReadOnly(srcPath, dstPath)
				if err != nil {
					return err
				}
				if linked {
					r.stats.Linked++
					continue
				}
			}
			if err := r.cloneFile(ctx, srcPath, dstPath); err != nil {
				return err
			}
		default:
			return fmt.Errorf("clone %s: cannot copy a %s; Options.Skip must leave it out: %w", srcPath, t.Type(), errdefs.ErrInvalidArgument)
		}
	}
	if err := applyOwnerMode(dstDir, info); err != nil {
		return err
	}
	r.stats.Dirs++
	r.unsynced = append(r.unsynced, dstDir)
	return nil
}

// linkReadOnly hard-links srcPath to dstPath when srcPath is a regular
// file without any write bit (immutable by rule); false when it is not, or
// when the two are on different filesystems (the caller copies).
func linkReadOnly(srcPath, dstPath string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Lstat(srcPath, &st); err != nil {
		return false, fsErr("stat", srcPath, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o222 != 0 {
		return false, nil
	}
	if err := os.Link(srcPath, dstPath); err != nil {
		if errors.Is(err, unix.EXDEV) {
			return false, nil
		}
		return false, fsErr("link", dstPath, err)
	}
	return true, nil
}

// copySymlink recreates a symlink with the same target, except that an
// absolute target inside the source tree is rewritten into the copy
// (invariant: nothing in a copy points into its source).
func (r *run) copySymlink(srcPath, dstPath, srcRoot, dstRoot string) error {
	target, err := os.Readlink(srcPath)
	if err != nil {
		return fsErr("readlink", srcPath, err)
	}
	if filepath.IsAbs(target) {
		clean := filepath.Clean(target)
		if clean == srcRoot || strings.HasPrefix(clean, srcRoot+string(filepath.Separator)) {
			target = dstRoot + strings.TrimPrefix(clean, srcRoot)
		}
	}
	if err := os.Symlink(target, dstPath); err != nil {
		return fsErr("symlink", dstPath, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(srcPath, &st); err != nil {
		return fsErr("stat", srcPath, err)
	}
	if err := unix.Lchown(dstPath, int(st.Uid), int(st.Gid)); err != nil {
		return fsErr("chown", dstPath, err)
	}
	r.stats.Symlinks++
	return nil
}

// applyOwnerMode gives a directory the mode and owner of st.
func applyOwnerMode(dir string, st unix.Stat_t) error {
	var got unix.Stat_t
	if err := unix.Lstat(dir, &got); err != nil {
		return fsErr("stat", dir, err)
	}
	if st.Uid != got.Uid || st.Gid != got.Gid {
		if err := unix.Lchown(dir, int(st.Uid), int(st.Gid)); err != nil {
			return fsErr("chown", dir, err)
		}
	}
	// After chown, which clears set-id bits.
	if err := unix.Chmod(dir, st.Mode&0o7777); err != nil {
		return fsErr("chmod", dir, err)
	}
	return nil
}

// syncAll fsyncs every file and directory the call created, newest
// first. Deferring the fsyncs to one pass, in that order, makes them cheap
// on the reflink path: on XFS the first fsync forces the log up to the
// newest change, which holds every earlier clone, so the others find
// nothing left to write (README: 2.3 log forces per instance directory
// instead of 7). Data copied by the fallback is written back by each
// file's own fsync either way.
func (r *run) syncAll() error {
	for i := len(r.unsynced) - 1; i >= 0; i-- {
		if err := r.syncDir(r.unsynced[i]); err != nil {
			return err
		}
	}
	r.unsynced = nil
	return nil
}

// syncDir fsyncs a file or directory by path (an fsync through any
// descriptor makes the inode durable).
func (r *run) syncDir(p string) error {
	if r.opts.NoSync {
		return nil
	}
	d, err := os.Open(p)
	if err != nil {
		return fsErr("open for fsync", p, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fsErr("fsync", p, err)
	}
	return nil
}

// finish completes the stats and writes the call's log line.
func (r *run) finish(kind, src, dst string, start time.Time) Stats {
	r.stats.Strategy = strategyOf(r.used)
	r.stats.Filesystem = fsType(dst)
	r.stats.Duration = time.Since(start)
	s := r.stats
	r.log.Info("clone "+kind, "src", src, "dst", dst, "clone_strategy", s.Strategy, "fs", s.Filesystem,
		"files", s.Files, "bytes", s.Bytes, "reflinked_bytes", s.ReflinkedBytes, "copied_bytes", s.CopiedBytes,
		"skipped", s.Skipped, "duration", s.Duration)
	return s
}

// emptyOrAbsent checks dst may be written: absent (false) or an empty
// directory (true). Anything else is ErrAlreadyExists: Dir never
// overwrites.
func emptyOrAbsent(dst string) (existed bool, err error) {
	fi, err := os.Lstat(dst)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fsErr("stat", dst, err)
	}
	if !fi.IsDir() {
		return false, fmt.Errorf("clone: %s exists and is not a directory: %w", dst, errdefs.ErrAlreadyExists)
	}
	d, err := os.Open(dst)
	if err != nil {
		return false, fsErr("open", dst, err)
	}
	defer d.Close()
	if _, err := d.Readdirnames(1); !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("clone: %s is not empty: %w", dst, errdefs.ErrAlreadyExists)
	}
	return true, nil
}

// tempPath names a staging sibling of dst: ".<base>.zygote-tmp-<random>".
func tempPath(dst string) (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+tempMarker+hex.EncodeToString(b[:])), nil
}

// renameInto moves the finished staging entry to dst without replacing
// anything but the empty directory dst the caller handed us (rename(2)
// replaces an empty directory atomically, and fails if it is no longer
// empty).
func renameInto(stage, dst string, replaceEmptyDir bool) error {
	var err error
	if replaceEmptyDir {
		err = unix.Rename(stage, dst)
	} else {
		err = unix.Renameat2(unix.AT_FDCWD, stage, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
			// A filesystem without RENAME_NOREPLACE: link-then-check would
			// not work for directories, so check and rename.
			if _, lerr := os.Lstat(dst); lerr == nil {
				err = unix.EEXIST
			} else {
				err = unix.Rename(stage, dst)
			}
		}
	}
	switch {
	case errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY):
		return fmt.Errorf("clone: %s appeared during the copy: %w", dst, errdefs.ErrAlreadyExists)
	case err != nil:
		return fsErr("rename into place", dst, err)
	}
	return nil
}

func removeIfExists(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// notFound adds errdefs.ErrNotFound to a "does not exist" error.
func notFound(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	}
	return err
}
