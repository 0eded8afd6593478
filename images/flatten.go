package images

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
)

// Whiteout markers (OCI image spec, "Whiteouts").
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	whiteoutMeta   = ".wh..wh."
)

// errEscape classes a tar entry that would write or link outside the root.
var errEscape = fmt.Errorf("%w: tar entry escapes the image root", errdefs.ErrInvalidArgument)

// flattener applies layers, bottom first, onto a directory tree under
// root. It never follows a symlink out of root: every path is resolved one
// component at a time inside root, with symlinks interpreted as the guest
// would (absolute targets restart at root) and ".." above root refused.
type flattener struct {
	root string
	buf  []byte
	// touched holds the paths (relative, resolved) the layer being
	// applied wrote, and all their ancestors: an opaque marker keeps
	// those and removes the rest below it.
	touched map[string]bool
}

func newFlattener(root string) *flattener {
	return &flattener{root: root, buf: make([]byte, 1<<20)}
}

// cleanName validates a tar entry name (or hardlink target) lexically and
// returns it relative to the root ("" is the root itself).
func cleanName(n string) (string, error) {
	if strings.HasPrefix(n, "/") {
		return "", fmt.Errorf("%q is an absolute path: %w", n, errEscape)
	}
	c := path.Clean("/" + n)
	for _, part := range strings.Split(n, "/") {
		if part == ".." {
			// "a/../b" stays inside lexically; anything climbing above
			// the root does not.
			if rel := path.Clean(n); rel == ".." || strings.HasPrefix(rel, "../") {
				return "", fmt.Errorf("%q climbs out with \"..\": %w", n, errEscape)
			}
		}
	}
	return strings.TrimPrefix(c, "/"), nil
}

// resolveDir resolves the directory rel (already cleaned) inside root,
// following symlinks in every component: absolute targets restart at
// root, ".." above root is refused. Missing directories are created
// (0755, root-owned) when create is set, else ErrNotFound. It returns the
// resolved path relative to root.
func (f *flattener) resolveDir(rel string, create bool) (string, error) {
	var done []string // resolved components so far
	todo := splitPath(rel)
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(done) == 0 {
				return "", fmt.Errorf("%q resolves above the root: %w", rel, errEscape)
			}
			done = done[:len(done)-1]
			continue
		}
		cur := path.Join(append(done, c)...)
		st, err := os.Lstat(filepath.Join(f.root, cur))
		switch {
		case errors.Is(err, os.ErrNotExist):
			if !create {
				return "", fmt.Errorf("resolve %q: %s: %w", rel, cur, errdefs.ErrNotFound)
			}
			if err := os.Mkdir(filepath.Join(f.root, cur), 0o755); err != nil {
				return "", err
			}
			done = append(done, c)
			continue
		case err != nil:
			return "", err
		}
		if st.Mode()&os.ModeSymlink != 0 {
			links++
			if links > 40 {
				return "", fmt.Errorf("resolve %q: %w", rel, syscall.ELOOP)
			}
			target, err := os.Readlink(filepath.Join(f.root, cur))
			if err != nil {
				return "", err
			}
			if strings.HasPrefix(target, "/") {
				done = done[:0]
			}
			todo = append(splitPath(target), todo...)
			continue
		}
		if !st.IsDir() {
			return "", fmt.Errorf("resolve %q: %s is not a directory: %w", rel, cur, errdefs.ErrInvalidArgument)
		}
		done = append(done, c)
	}
	return path.Join(done...), nil
}

func splitPath(p string) []string {
	return strings.Split(strings.Trim(p, "/"), "/")
}

// applyLayer reads one uncompressed layer tar and applies it.
func (f *flattener) applyLayer(r io.Reader) error {
	f.touched = make(map[string]bool)
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read layer tar: %w", err)
		}
		if err := f.applyEntry(h, tr); err != nil {
			return fmt.Errorf("layer entry %q: %w", h.Name, err)
		}
	}
}

func (f *flattener) applyEntry(h *tar.Header, r io.Reader) error {
	rel, err := cleanName(h.Name)
	if err != nil {
		return err
	}
	dir, base := path.Split(rel)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return f.whiteout(dir, base)
	}
	if rel == "" { // the root itself: only its metadata
		return f.setMeta(f.root, h)
	}
	parent, err := f.resolveDir(dir, true)
	if err != nil {
		return err
	}
	relPath := path.Join(parent, base)
	p := filepath.Join(f.root, relPath)
	if st, err := os.Lstat(p); err == nil {
		if !(st.IsDir() && h.Typeflag == tar.TypeDir) {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f.touch(relPath)

	switch h.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	case tar.TypeReg, tar.TypeRegA:
		if err := f.writeFile(p, r); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if !strings.HasPrefix(h.Linkname, "/") {
			if t := path.Clean(path.Join(parent, h.Linkname)); t == ".." || strings.HasPrefix(t, "../") {
				return fmt.Errorf("symlink to %q points out of the root: %w", h.Linkname, errEscape)
			}
		}
		if err := os.Symlink(h.Linkname, p); err != nil {
			return err
		}
	case tar.TypeLink:
		target, err := cleanName(h.Linkname)
		if err != nil {
			return fmt.Errorf("hardlink target: %w", err)
		}
		tdir, tbase := path.Split(target)
		tparent, err := f.resolveDir(tdir, false)
		if err != nil {
			return fmt.Errorf("hardlink target %q: %w", h.Linkname, err)
		}
		tp := filepath.Join(f.root, tparent, tbase)
		st, err := os.Lstat(tp)
		if err != nil {
			return fmt.Errorf("hardlink target %q: %w", h.Linkname, err)
		}
		if st.IsDir() {
			return fmt.Errorf("hardlink to directory %q: %w", h.Linkname, errdefs.ErrInvalidArgument)
		}
		return os.Link(tp, p) // shares the target's inode and metadata
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		mode := uint32(h.Mode & 0o7777)
		switch h.Typeflag {
		case tar.TypeChar:
			mode |= unix.S_IFCHR
		case tar.TypeBlock:
			mode |= unix.S_IFBLK
		default:
			mode |= unix.S_IFIFO
		}
		if err := unix.Mknod(p, mode, int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor)))); err != nil {
			return fmt.Errorf("mknod: %w", err)
		}
	case tar.TypeXGlobalHeader:
		return nil
	default:
		return fmt.Errorf("unsupported tar entry type %q: %w", h.Typeflag, errdefs.ErrInvalidArgument)
	}
	return f.setMeta(p, h)
}

func (f *flattener) writeFile(p string, r io.Reader) error {
	out, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = io.CopyBuffer(out, r, f.buf)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// setMeta applies owner, mode, xattrs and mtime; chown comes first because
// it clears setuid and setgid bits.
func (f *flattener) setMeta(p string, h *tar.Header) error {
	if err := os.Lchown(p, h.Uid, h.Gid); err != nil {
		return err
	}
	isLink := h.Typeflag == tar.TypeSymlink
	if !isLink {
		if err := unix.Fchmodat(unix.AT_FDCWD, p, uint32(h.Mode&0o7777), 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	for k, v := range h.PAXRecords {
		if !strings.HasPrefix(k, "SCHILY.xattr.") {
			continue
		}
		if err := unix.Lsetxattr(p, strings.TrimPrefix(k, "SCHILY.xattr."), []byte(v), 0); err != nil {
			return fmt.Errorf("setxattr %s: %w", k, err)
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(h.AccessTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
	if h.AccessTime.IsZero() {
		ts[0] = ts[1]
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("utimes: %w", err)
	}
	return nil
}

// whiteout handles ".wh.<name>" (remove name from the layers below) and
// ".wh..wh..opq" (hide everything below in dir that this layer did not
// write itself).
func (f *flattener) whiteout(dir, base string) error {
	parent, err := f.resolveDir(dir, true)
	if err != nil {
		return err
	}
	pdir := filepath.Join(f.root, parent)
	if base == whiteoutOpaque {
		return f.prune(parent)
	}
	if strings.HasPrefix(base, whiteoutMeta) {
		return nil // other AUFS metadata (.wh..wh.plnk, …): nothing to apply
	}
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if victim == "" || victim == "." || victim == ".." {
		return fmt.Errorf("bad whiteout %q: %w", base, errdefs.ErrInvalidArgument)
	}
	err = os.RemoveAll(filepath.Join(pdir, victim))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// touch records that the current layer wrote rel.
func (f *flattener) touch(rel string) {
	for p := rel; p != "." && p != "" && !f.touched[p]; p = path.Dir(p) {
		f.touched[p] = true
	}
}

// prune removes everything below dir (relative) that the current layer
// did not write: the effect of an opaque marker on the layers beneath.
func (f *flattener) prune(dir string) error {
	ents, err := os.ReadDir(filepath.Join(f.root, dir))
	if err != nil {
		return err
	}
	for _, e := range ents {
		child := path.Join(dir, e.Name())
		switch {
		case !f.touched[child]:
			if err := os.RemoveAll(filepath.Join(f.root, child)); err != nil {
				return err
			}
		case e.IsDir():
			if err := f.prune(child); err != nil {
				return err
			}
		}
	}
	return nil
}
