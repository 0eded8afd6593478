package initd

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/guest/agentproto"
)

// File operations (see agentproto/files.go for the stream layout). Paths
// are guest paths, absolute, resolved in the guest's root: when a workload
// root (chroot) exists, this is where it must resolve them inside it.

func fileErr(op, p string, err error) *agentproto.Error {
	code := agentproto.CodeInternal
	switch {
	case errors.Is(err, fs.ErrNotExist):
		code = agentproto.CodeNotFound
	case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.EEXIST),
		errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ENAMETOOLONG):
		code = agentproto.CodeInvalidArgument
	}
	return &agentproto.Error{Code: code, Message: fmt.Sprintf("%s %s: %v", op, p, unwrapPathErr(err))}
}

func unwrapPathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// guestPath checks that p is an absolute path and cleans it.
func guestPath(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", &agentproto.Error{Code: agentproto.CodeInvalidArgument, Message: fmt.Sprintf("path %q: want an absolute guest path", p)}
	}
	return path.Clean(p), nil
}

// permBits returns the 07777 bits of a stat mode.
func permBits(st *syscall.Stat_t) uint32 { return st.Mode & 0o7777 }

func statOf(fi fs.FileInfo) *syscall.Stat_t {
	st, _ := fi.Sys().(*syscall.Stat_t)
	if st == nil {
		st = &syscall.Stat_t{Mode: uint32(fi.Mode().Perm())}
	}
	return st
}

func (s *session) stat(req *agentproto.StatRequest) (*agentproto.PathInfo, error) {
	if req == nil {
		return nil, &agentproto.Error{Code: agentproto.CodeInvalidArgument, Message: "stat: empty request"}
	}
	p, err := guestPath(req.Path)
	if err != nil {
		return nil, err
	}
	if p, err = hostPathInRoot(s.a.WorkloadRoot(), p, req.FollowLinks); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return &agentproto.PathInfo{Exists: false}, nil
		}
		return &agentproto.PathInfo{Exists: false, Error: unwrapPathErr(err).Error()}, nil
	}
	var fi fs.FileInfo
	if req.FollowLinks {
		fi, err = os.Stat(p)
	} else {
		fi, err = os.Lstat(p)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return &agentproto.PathInfo{Exists: false}, nil
	}
	if err != nil {
		return &agentproto.PathInfo{Exists: false, Error: unwrapPathErr(err).Error()}, nil
	}
	st := statOf(fi)
	info := &agentproto.PathInfo{
		Exists: true, IsDir: fi.IsDir(), IsFile: fi.Mode().IsRegular(),
		Mode: permBits(st), Size: fi.Size(), Mtime: fi.ModTime().Unix(), UID: st.Uid, GID: st.Gid,
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		info.IsSymlink = true
		info.LinkTarget, _ = os.Readlink(p)
	}
	return info, nil
}

// copyFrom streams the tree at req.Path to the host.
func (s *session) copyFrom(st *yamux.Stream, req *agentproto.CopyFromRequest) {
	if req == nil {
		replyErr(st, &agentproto.Error{Code: agentproto.CodeInvalidArgument, Message: "copy_from: empty request"})
		return
	}
	root, err := guestPath(req.Path)
	if err != nil {
		replyErr(st, err)
		return
	}
	base := path.Base(root) // the name the host sees: the guest path's
	if base == "/" {
		base = ""
	}
	guest := root
	if root, err = hostPathInRoot(s.a.WorkloadRoot(), root, req.FollowLinks); err != nil {
		replyErr(st, fileErr("copy from", guest, err))
		return
	}
	stat := os.Lstat
	if req.FollowLinks {
		stat = os.Stat
	}
	fi, err := stat(root)
	if err != nil {
		replyErr(st, fileErr("copy from", root, err))
		return
	}
	if reply(st, agentproto.Response{}) != nil {
		return
	}
	w := &treeSender{st: st, follow: req.FollowLinks, stat: stat}
	if !fi.IsDir() {
		err = w.entry(root, "", fi)
	} else {
		walkRoot := root
		if req.FollowLinks {
			// A link to a directory: walk the directory (entries keep
			// the link's name).
			if walkRoot, err = filepath.EvalSymlinks(root); err != nil {
				walkRoot = root
			}
		}
		root := walkRoot
		err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel := base
			if p != root {
				rel = path.Join(base, strings.TrimPrefix(p, strings.TrimSuffix(root, "/")+"/"))
			}
			fi, err := stat(p)
			if err != nil {
				return err
			}
			return w.entry(p, rel, fi)
		})
	}
	res := agentproto.CopyResult{Bytes: w.bytes}
	if err != nil {
		var pe *fs.PathError
		p := root
		if errors.As(err, &pe) {
			p = pe.Path
		}
		res.Error, res.Path = fileErr("copy from", p, err), p
	}
	agentproto.WriteJSON(st, agentproto.MsgCopyDone, res)
}

type treeSender struct {
	st     io.Writer
	follow bool
	stat   func(string) (fs.FileInfo, error)
	bytes  int64
	buf    []byte
}

// errHostGone ends a walk whose host stopped reading.
var errHostGone = errors.New("host went away")

// entry sends one entry. Devices, fifos and sockets are skipped: they have
// no bytes to copy and opening a fifo would block.
func (w *treeSender) entry(p, rel string, fi fs.FileInfo) error {
	st := statOf(fi)
	h := agentproto.FileHeader{Path: rel, Mode: permBits(st), Mtime: fi.ModTime().Unix(),
		MtimeNsec: int64(fi.ModTime().Nanosecond()), UID: st.Uid, GID: st.Gid}
	switch {
	case fi.IsDir():
		h.IsDir = true
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		h.IsSymlink, h.LinkTarget = true, target
	case fi.Mode().IsRegular():
		h.Size = fi.Size()
	default:
		return nil
	}
	var f *os.File
	if fi.Mode().IsRegular() {
		flags := os.O_RDONLY | syscall.O_NOFOLLOW
		if w.follow {
			flags = os.O_RDONLY
		}
		var err error
		if f, err = os.OpenFile(p, flags, 0); err != nil {
			return err
		}
		defer f.Close()
	}
	if agentproto.WriteJSON(w.st, agentproto.MsgFileHeader, h) != nil {
		return errHostGone
	}
	if f != nil {
		if w.buf == nil {
			w.buf = make([]byte, agentproto.MaxChunk)
		}
		// Exactly Size bytes: the header promised them.
		left := h.Size
		for left > 0 {
			n, err := f.Read(w.buf[:min(int64(len(w.buf)), left)])
			if n > 0 {
				if agentproto.WriteMsg(w.st, agentproto.MsgFileData, w.buf[:n]) != nil {
					return errHostGone
				}
				left -= int64(n)
				w.bytes += int64(n)
			}
			if err == io.EOF && left > 0 {
				return &fs.PathError{Op: "read", Path: p, Err: fmt.Errorf("file shrank by %d bytes while being copied", left)}
			}
			if err != nil && err != io.EOF {
				return err
			}
		}
	}
	if agentproto.WriteMsg(w.st, agentproto.MsgFileEnd, nil) != nil {
		return errHostGone
	}
	return nil
}

// copyTo creates one entry from the host.
func (s *session) copyTo(st *yamux.Stream, req *agentproto.CopyToRequest) {
	if req == nil {
		replyErr(st, &agentproto.Error{Code: agentproto.CodeInvalidArgument, Message: "copy_to: empty request"})
		return
	}
	p, err := guestPath(req.Path)
	if err != nil {
		replyErr(st, err)
		return
	}
	if p == "/" && !req.IsDir {
		replyErr(st, &agentproto.Error{Code: agentproto.CodeInvalidArgument, Message: "copy_to: / is a directory"})
		return
	}
	wroot := s.a.WorkloadRoot()
	if err := mkdirAllInRoot(wroot, path.Dir(p)); err != nil {
		replyErr(st, fileErr("copy to", path.Dir(p), err))
		return
	}
	guest := p
	if p, err = hostPathInRoot(wroot, p, false); err != nil {
		replyErr(st, fileErr("copy to", guest, err))
		return
	}
	var res agentproto.CopyResult
	switch {
	case req.IsDir:
		err = makeDir(p, req)
	case req.LinkTarget != "":
		err = makeSymlink(p, req)
	default:
		var f *os.File
		if f, err = os.CreateTemp(path.Dir(p), ".zygote-cp-*"); err != nil {
			replyErr(st, fileErr("copy to", p, err))
			return
		}
		defer func() {
			f.Close()
			os.Remove(f.Name()) // after the rename: ENOENT, harmless
		}()
		if reply(st, agentproto.Response{}) != nil {
			return
		}
		res.Bytes, err = receiveFile(st, f)
		if errors.Is(err, errHostGone) {
			return
		}
		if err == nil {
			err = finishFile(f, p, req)
		}
		if err != nil {
			res.Error, res.Path = fileErr("copy to", p, err), p
		}
		agentproto.WriteJSON(st, agentproto.MsgCopyDone, res)
		return
	}
	if err != nil {
		replyErr(st, fileErr("copy to", p, err))
		return
	}
	if reply(st, agentproto.Response{}) != nil {
		return
	}
	// No bytes for a directory or a link: just the end marker.
	if t, _, err := agentproto.ReadMsg(st); err != nil || t != agentproto.MsgFileEnd {
		return
	}
	agentproto.WriteJSON(st, agentproto.MsgCopyDone, res)
}

// receiveFile writes MsgFileData into f until MsgFileEnd.
func receiveFile(st io.Reader, f *os.File) (int64, error) {
	var n int64
	var werr error
	for {
		t, b, err := agentproto.ReadMsg(st)
		if err != nil {
			return n, errHostGone
		}
		switch t {
		case agentproto.MsgFileData:
			if werr == nil { // after a failed write, drain to the end marker
				_, werr = f.Write(b)
				n += int64(len(b))
			}
		case agentproto.MsgFileEnd:
			return n, werr
		default:
			return n, fmt.Errorf("unexpected %s message in a file", t)
		}
	}
}

func modeOr(m, def uint32) uint32 {
	if m == 0 {
		return def
	}
	return m & 0o7777
}

// applyMeta sets owner, mode and mtime, in that order (chown clears the
// set-id bits).
func applyMeta(p string, req *agentproto.CopyToRequest, def uint32, link bool) error {
	if req.UID != 0 || req.GID != 0 {
		if err := os.Lchown(p, int(req.UID), int(req.GID)); err != nil {
			return err
		}
	}
	if !link {
		// os.Chmod drops the set-id and sticky bits' Go encoding; use the
		// raw syscall with the 07777 bits.
		if err := unix.Fchmodat(unix.AT_FDCWD, p, modeOr(req.Mode, def), 0); err != nil {
			return &fs.PathError{Op: "chmod", Path: p, Err: err}
		}
	}
	return setMtime(p, req)
}

func setMtime(p string, req *agentproto.CopyToRequest) error {
	if req.Mtime == 0 {
		return nil
	}
	t := time.Unix(req.Mtime, req.MtimeNsec)
	ts := []unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "utimes", Path: p, Err: err}
	}
	return nil
}

func makeDir(p string, req *agentproto.CopyToRequest) error {
	if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return &fs.PathError{Op: "mkdir", Path: p, Err: syscall.ENOTDIR}
	}
	return applyMeta(p, req, 0o755, false)
}

func makeSymlink(p string, req *agentproto.CopyToRequest) error {
	if fi, err := os.Lstat(p); err == nil {
		if fi.IsDir() {
			return &fs.PathError{Op: "symlink", Path: p, Err: syscall.EISDIR}
		}
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	if err := os.Symlink(req.LinkTarget, p); err != nil {
		return err
	}
	return applyMeta(p, req, 0, true)
}

// finishFile gives the temporary file its metadata and renames it over p.
func finishFile(f *os.File, p string, req *agentproto.CopyToRequest) error {
	if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
		return &fs.PathError{Op: "rename", Path: p, Err: syscall.EISDIR}
	}
	if err := applyMeta(f.Name(), req, 0o644, false); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), p)
}
