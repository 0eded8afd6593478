package instancestest

import (
	"context"
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

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/guest/agentproto"
	"github.com/zygote/zygote/instances"
)

var _ instances.FileAgent = (*FakeAgent)(nil)

// FakeGuestRoot is where a fake VM's "guest filesystem" lives: a directory
// in its instance directory that the fake agent's file operations map
// guest paths into (lexically: a test double, it does not defend against
// symlinks). The real agent's file operations are tested in guest/agent.
func FakeGuestRoot(instanceDir string) string { return filepath.Join(instanceDir, "fake-guest-root") }

func (a *FakeAgent) hostPath(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("fake agent: path %q is not absolute: %w", p, errdefs.ErrInvalidArgument)
	}
	root := FakeGuestRoot(a.vm.Spec().Dir)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", err
	}
	return filepath.Join(root, path.Clean(p)), nil
}

func fakeFileErr(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("fake agent: %w: %w", err, errdefs.ErrNotFound)
	}
	return err
}

func (a *FakeAgent) Stat(ctx context.Context, p string, follow bool) (agentproto.PathInfo, error) {
	if err := a.alive(); err != nil {
		return agentproto.PathInfo{}, err
	}
	hp, err := a.hostPath(p)
	if err != nil {
		return agentproto.PathInfo{}, err
	}
	stat := os.Lstat
	if follow {
		stat = os.Stat
	}
	fi, err := stat(hp)
	if errors.Is(err, fs.ErrNotExist) {
		return agentproto.PathInfo{}, nil
	}
	if err != nil {
		return agentproto.PathInfo{Error: err.Error()}, nil
	}
	info := agentproto.PathInfo{Exists: true, IsDir: fi.IsDir(), IsFile: fi.Mode().IsRegular(),
		Mode: uint32(fi.Mode().Perm()), Size: fi.Size(), Mtime: fi.ModTime().Unix()}
	if fi.Mode()&fs.ModeSymlink != 0 {
		info.IsSymlink = true
		info.LinkTarget, _ = os.Readlink(hp)
	}
	return info, nil
}

func (a *FakeAgent) CopyFrom(ctx context.Context, req agentproto.CopyFromRequest, fn agent.CopyFromFunc) (int64, error) {
	if err := a.alive(); err != nil {
		return 0, err
	}
	root, err := a.hostPath(req.Path)
	if err != nil {
		return 0, err
	}
	fi, err := os.Lstat(root)
	if err != nil {
		return 0, fakeFileErr(err)
	}
	var total int64
	send := func(p, rel string, fi fs.FileInfo) error {
		st, _ := fi.Sys().(*syscall.Stat_t)
		h := agentproto.FileHeader{Path: rel, Mode: uint32(fi.Mode().Perm()), Mtime: fi.ModTime().Unix(),
			MtimeNsec: int64(fi.ModTime().Nanosecond()), UID: st.Uid, GID: st.Gid}
		var r io.Reader = strings.NewReader("")
		switch {
		case fi.IsDir():
			h.IsDir = true
		case fi.Mode()&fs.ModeSymlink != 0:
			h.IsSymlink = true
			h.LinkTarget, _ = os.Readlink(p)
		default:
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			h.Size = fi.Size()
			r = f
		}
		cr := &countingReader{r: r}
		err := fn(h, cr)
		total += cr.n
		return err
	}
	if !fi.IsDir() {
		return total, send(root, "", fi)
	}
	base := path.Base(req.Path)
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		return send(p, path.Join(base, filepath.ToSlash(rel)), fi)
	})
	return total, err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (a *FakeAgent) CopyTo(ctx context.Context, req agentproto.CopyToRequest, r io.Reader) (int64, error) {
	if err := a.alive(); err != nil {
		return 0, err
	}
	hp, err := a.hostPath(req.Path)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Dir(hp), 0o755); err != nil {
		return 0, err
	}
	var n int64
	mode := fs.FileMode(req.Mode & 0o777)
	switch {
	case req.IsDir:
		if err := os.Mkdir(hp, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return 0, err
		}
		if mode != 0 {
			os.Chmod(hp, mode)
		}
	case req.LinkTarget != "":
		os.Remove(hp)
		if err := os.Symlink(req.LinkTarget, hp); err != nil {
			return 0, err
		}
	default:
		if mode == 0 {
			mode = 0o644
		}
		f, err := os.OpenFile(hp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
		if err != nil {
			return 0, err
		}
		if r != nil {
			n, err = io.Copy(f, r)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return n, err
		}
		os.Chmod(hp, mode)
	}
	if req.UID != 0 || req.GID != 0 {
		if err := os.Lchown(hp, int(req.UID), int(req.GID)); err != nil {
			return n, err
		}
	}
	if req.Mtime != 0 {
		t := time.Unix(req.Mtime, req.MtimeNsec)
		if req.LinkTarget == "" {
			os.Chtimes(hp, t, t)
		}
	}
	return n, nil
}
