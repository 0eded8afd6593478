package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/api"
)

// extractor creates the entries of a copy out of a guest beneath root.
//
// Safety: root is opened once (it is the caller's own path, resolved as
// the caller's shell would). Every entry below it is reached with
// openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) from that descriptor, and
// its last component is created or opened with *at calls that do not
// follow a symlink (O_NOFOLLOW, AT_SYMLINK_NOFOLLOW). A symlink the copy
// itself created (say etc -> /etc) therefore can never redirect a later
// entry (etc/passwd): that entry fails instead of writing outside root.
type extractor struct {
	root    string // the copy's target on the host
	isDir   bool   // the source is a directory: root is that directory
	archive bool
	rootFd  int // root (directory copy) or root's parent (file copy)
	dirs    []dirMeta
}

type dirMeta struct {
	rel string
	m   api.CpMessage
}

func newExtractor(target string, isDir, archive bool) (*extractor, error) {
	x := &extractor{root: target, isDir: isDir, archive: archive, rootFd: -1}
	dir := filepath.Dir(target)
	if isDir {
		if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("cp: %w", err)
		}
		dir = target
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cp: open %s: %w", dir, err)
	}
	x.rootFd = fd
	return x, nil
}

func (x *extractor) close() {
	if x.rootFd >= 0 {
		unix.Close(x.rootFd)
		x.rootFd = -1
	}
}

// beneath opens the directory rel (relative to rootFd) without following
// any symlink and without leaving rootFd.
func (x *extractor) beneath(rel string, flags uint64) (int, error) {
	fd, err := unix.Openat2(x.rootFd, rel, &unix.OpenHow{
		Flags:   flags | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, fmt.Errorf("cp: %s: %w (a symlink or a non-directory on the way: not followed)", filepath.Join(x.root, rel), err)
	}
	return fd, nil
}

// place returns the directory fd and name where the entry rel lives; the
// caller closes fd unless it is rootFd.
func (x *extractor) place(rel string) (int, string, error) {
	if rel == "." {
		if x.isDir {
			return -1, "", nil // the root directory itself
		}
		return x.rootFd, filepath.Base(x.root), nil
	}
	if !x.isDir {
		return -1, "", fmt.Errorf("cp: the server sent %q inside a single-file copy: refused", rel)
	}
	dir, name := filepath.Split(rel)
	if dir == "" {
		return x.rootFd, name, nil
	}
	fd, err := x.beneath(filepath.Clean(dir), unix.O_PATH|unix.O_DIRECTORY)
	return fd, name, err
}

func (x *extractor) closeDir(fd int) {
	if fd >= 0 && fd != x.rootFd {
		unix.Close(fd)
	}
}

// entry creates one entry and consumes its bytes; it returns the byte
// count.
func (x *extractor) entry(rel string, h api.CpMessage, cc *cpConn) (int64, error) {
	dfd, name, err := x.place(rel)
	if err != nil {
		return 0, err
	}
	defer x.closeDir(dfd)
	full := filepath.Join(x.root, rel)
	if !h.IsDir && name == "" {
		return 0, fmt.Errorf("cp: the server sent a non-directory for the directory %s", full)
	}
	// What is there now (never following a link).
	var st unix.Stat_t
	exists := name != "" && unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
	isDirNow := exists && st.Mode&unix.S_IFMT == unix.S_IFDIR
	switch {
	case h.IsDir:
		if name != "" {
			if exists && !isDirNow {
				return 0, fmt.Errorf("cp: %s exists and is not a directory", full)
			}
			if !exists {
				if err := unix.Mkdirat(dfd, name, 0o700); err != nil {
					return 0, fmt.Errorf("cp: mkdir %s: %w", full, err)
				}
			}
		}
		x.dirs = append(x.dirs, dirMeta{rel, h})
		return 0, nil
	case h.IsSymlink:
		if isDirNow {
			return 0, fmt.Errorf("cp: %s is a directory; not replacing it with a symlink", full)
		}
		if exists {
			if err := unix.Unlinkat(dfd, name, 0); err != nil {
				return 0, fmt.Errorf("cp: replace %s: %w", full, err)
			}
		}
		if err := unix.Symlinkat(h.LinkTarget, dfd, name); err != nil {
			return 0, fmt.Errorf("cp: symlink %s: %w", full, err)
		}
		if x.archive {
			if err := unix.Fchownat(dfd, name, int(h.UID), int(h.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return 0, fmt.Errorf("cp: chown %s: %w", full, err)
			}
		}
		return 0, setTimes(dfd, name, h, full)
	}
	// A regular file.
	if isDirNow {
		return 0, fmt.Errorf("cp: %s is a directory; not replacing it with a file", full)
	}
	if exists && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		if err := unix.Unlinkat(dfd, name, 0); err != nil { // replace the link, never write through it
			return 0, fmt.Errorf("cp: replace %s: %w", full, err)
		}
	}
	fd, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return 0, fmt.Errorf("cp: create %s: %w", full, err)
	}
	f := os.NewFile(uintptr(fd), full)
	defer f.Close()
	n, err := cc.readFileData(f, h.Size)
	if err != nil {
		return n, fmt.Errorf("cp: %s: %w", full, err)
	}
	if x.archive {
		if err := f.Chown(int(h.UID), int(h.GID)); err != nil {
			return n, fmt.Errorf("cp: chown %s: %w", full, err)
		}
	}
	if err := unix.Fchmod(fd, h.Mode&0o7777); err != nil {
		return n, fmt.Errorf("cp: chmod %s: %w", full, err)
	}
	if err := f.Close(); err != nil {
		return n, fmt.Errorf("cp: %s: %w", full, err)
	}
	return n, setTimes(dfd, name, h, full)
}

// readFileData copies the binary frames of one file into w: exactly size
// bytes, one frame in memory at a time.
func (cc *cpConn) readFileData(w io.Writer, size int64) (int64, error) {
	var n int64
	for n < size {
		mt, r, err := cc.ws.NextReader()
		if err != nil {
			return n, fmt.Errorf("cp stream: %w", err)
		}
		if mt != websocket.BinaryMessage {
			raw, _ := io.ReadAll(io.LimitReader(r, 4096))
			var m api.CpMessage
			if json.Unmarshal(raw, &m) == nil && m.Type == "error" {
				return n, fmt.Errorf("%s: %s", m.Path, m.Message)
			}
			return n, fmt.Errorf("the server sent %d of %d bytes", n, size)
		}
		k, err := io.Copy(w, io.LimitReader(r, size-n+1))
		n += k
		if err != nil {
			return n, err
		}
	}
	if n > size {
		return n, fmt.Errorf("the server sent more than the %d bytes announced", size)
	}
	return n, nil
}

func setTimes(dfd int, name string, h api.CpMessage, full string) error {
	t := time.Unix(h.Mtime, h.MtimeNsec)
	ts := []unix.Timespec{unix.NsecToTimespec(time.Now().UnixNano()), unix.NsecToTimespec(t.UnixNano())}
	if err := unix.UtimesNanoAt(dfd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("cp: set mtime of %s: %w", full, err)
	}
	return nil
}

// finish applies directories' owners, modes and mtimes, children first:
// creating their entries changed the mtimes, and a read-only directory
// could not have taken its entries.
func (x *extractor) finish() error {
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		full := filepath.Join(x.root, d.rel)
		var fd int
		var err error
		if d.rel == "." {
			fd, err = unix.Dup(x.rootFd)
		} else {
			fd, err = x.beneath(d.rel, unix.O_RDONLY|unix.O_DIRECTORY)
		}
		if err != nil {
			return err
		}
		if x.archive {
			err = unix.Fchown(fd, int(d.m.UID), int(d.m.GID))
		}
		if err == nil {
			err = unix.Fchmod(fd, d.m.Mode&0o7777)
		}
		if err == nil {
			t := time.Unix(d.m.Mtime, d.m.MtimeNsec)
			err = os.Chtimes(fmt.Sprintf("/proc/self/fd/%d", fd), time.Now(), t)
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("cp: %s: %w", full, err)
		}
	}
	return nil
}
