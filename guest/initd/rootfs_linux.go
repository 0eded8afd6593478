package initd

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/zygote/zygote/guest/agentproto"
	"golang.org/x/sys/unix"
)

// openInRoot opens name (absolute, guest view) inside root, resolving
// every symlink as if root were "/" (RESOLVE_IN_ROOT): an image's absolute
// symlinks (/bin/sh -> /bin/busybox) point into the image, never into the
// initramfs. root "" is the real root.
func openInRoot(root, name string) (*os.File, error) {
	if root == "" {
		return os.Open(name)
	}
	fd, err := openat2InRoot(root, name, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), filepath.Join(root, name)), nil
}

func openat2InRoot(root, name string, flags int) (int, error) {
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(rfd)
	fd, err := unix.Openat2(rfd, strings.TrimPrefix(name, "/"), &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		if name == "/" || name == "" {
			return unix.Open(root, flags|unix.O_CLOEXEC, 0)
		}
		return -1, &os.PathError{Op: "open", Path: name, Err: err}
	}
	return fd, nil
}

// executableIn checks that name is an executable regular file in root.
func executableIn(root, name string) error {
	if root == "" {
		return executable(name)
	}
	fd, err := openat2InRoot(root, name, unix.O_PATH)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &os.PathError{Op: "stat", Path: name, Err: err}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("%s: is a directory", name)
	}
	if st.Mode&0o111 == 0 {
		return fmt.Errorf("%s: permission denied", name)
	}
	return nil
}

// lookPathIn resolves file against the PATH in env, inside root; the
// result is the path in the root's view (what execve sees after chroot).
func lookPathIn(root, file string, env []string) (string, error) {
	if root == "" {
		return lookPath(file, env)
	}
	if file == "" {
		return "", errors.New("empty command")
	}
	if strings.Contains(file, "/") {
		if !filepath.IsAbs(file) {
			return "", fmt.Errorf("%s: a relative path with a slash is ambiguous in an image; use an absolute path", file)
		}
		if err := executableIn(root, file); err != nil {
			return "", err
		}
		return file, nil
	}
	path := strings.TrimPrefix(DefaultEnv[0], "PATH=")
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	var denied error
	for _, dir := range filepath.SplitList(path) {
		if !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, file)
		err := executableIn(root, p)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) && denied == nil {
			denied = err
		}
	}
	if denied != nil {
		return "", denied
	}
	return "", fmt.Errorf("%s: %w", file, errNotFound)
}

// LinuxProvisioner is zygote-init's Provisioner.
type LinuxProvisioner struct {
	Log *slog.Logger
	// DiskWait bounds the wait for a disk or the NIC to appear (default
	// 5 s; they normally exist before the agent serves).
	DiskWait time.Duration
}

var _ Provisioner = LinuxProvisioner{}

// Where the root's parts are mounted in the initramfs.
const (
	lowerDir = "/run/zygote/lower" // the root disk, read-only
	rwDir    = "/run/zygote/rw"    // the overlay disk: upper/ and work/
)

// Root mounts the root disk read-only, the overlay disk (ext4) read-write,
// the overlay of both at agentproto.WorkloadRoot, binds /proc, /sys and
// /dev (with /dev/pts and /dev/shm) into it, mounts the volumes and binds
// the agent's /etc/hosts, /etc/hostname and /etc/resolv.conf over the
// image's, so that later hostname changes show inside.
func (p LinuxProvisioner) Root(r agentproto.RootFS, vols []agentproto.Volume) (_ string, err error) {
	// On failure, unmount what this call mounted (newest first), so a
	// retried Configure, maybe with other disks, starts clean.
	var mountedHere []string
	mountAt := func(source, target, fstype string, flags uintptr, data string) error {
		done, err := mountAt(source, target, fstype, flags, data)
		if done {
			mountedHere = append(mountedHere, target)
		}
		return err
	}
	defer func() {
		if err != nil {
			for i := len(mountedHere) - 1; i >= 0; i-- {
				unix.Unmount(mountedHere[i], unix.MNT_DETACH)
			}
		}
	}()
	bindInto := func(root, dir string) error {
		return mountAt(dir, filepath.Join(root, dir), "", unix.MS_BIND|unix.MS_REC, "")
	}
	if err := loadFilesystem("overlay"); err != nil {
		return "", err
	}
	if err := loadFilesystem(r.FSType); err != nil {
		return "", err
	}
	dev, err := p.findDisk(r.Serial)
	if err != nil {
		return "", err
	}
	if err := mountAt(dev, lowerDir, r.FSType, unix.MS_RDONLY|unix.MS_NODEV, ""); err != nil {
		return "", fmt.Errorf("root disk: %w", err)
	}
	if r.OverlaySerial != "" {
		odev, err := p.findDisk(r.OverlaySerial)
		if err != nil {
			return "", err
		}
		// noinit_itable: the host formatted it with lazy_itable_init, and
		// zeroing the inode tables in the background would fill the sparse
		// file (and the forks that copy it) with zeros.
		if err := mountAt(odev, rwDir, "ext4", unix.MS_NODEV, "noinit_itable"); err != nil {
			return "", fmt.Errorf("overlay disk: %w", err)
		}
	} else if err := mountAt("tmpfs", rwDir, "tmpfs", unix.MS_NODEV, "mode=0755"); err != nil {
		return "", fmt.Errorf("overlay tmpfs: %w", err)
	}
	for _, d := range []string{"upper", "work"} {
		if err := os.MkdirAll(filepath.Join(rwDir, d), 0o755); err != nil {
			return "", err
		}
	}
	root := agentproto.WorkloadRoot
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lowerDir, rwDir, rwDir)
	if err := mountAt("overlay", root, "overlay", 0, opts); err != nil {
		return "", fmt.Errorf("overlay root: %w", err)
	}
	for _, d := range []string{"/proc", "/sys", "/dev"} {
		if err := bindInto(root, d); err != nil {
			return "", err
		}
	}
	for _, v := range vols {
		fstype := v.FSType
		if fstype == "" {
			fstype = "ext4"
		}
		if err := loadFilesystem(fstype); err != nil {
			return "", err
		}
		dev, err := p.findDisk(v.Serial)
		if err != nil {
			return "", err
		}
		var flags uintptr = unix.MS_NODEV
		if v.ReadOnly {
			flags |= unix.MS_RDONLY
		}
		if err := mountAt(dev, filepath.Join(root, v.Path), fstype, flags, ""); err != nil {
			return "", fmt.Errorf("volume %s: %w", v.Serial, err)
		}
	}
	for _, f := range []string{"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"} {
		if _, err := os.Stat(f); err != nil {
			continue // no DNS configured: the image keeps its own resolv.conf
		}
		if err := bindFileInto(root, f); err != nil {
			return "", err
		}
		mountedHere = append(mountedHere, filepath.Join(root, f))
	}
	return root, nil
}

// mountAt creates target and mounts source there; it reports whether it
// mounted. Something already mounted there is an error: only a failed
// Root leaves mounts, and it removes them.
func mountAt(source, target, fstype string, flags uintptr, data string) (bool, error) {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return false, err
	}
	if mounted(target) {
		return false, fmt.Errorf("%s is already a mount point", target)
	}
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		return false, fmt.Errorf("mount %s (%s) on %s: %w", source, fstype, target, err)
	}
	return true, nil
}

// bindFileInto binds the agent's file f over the root's, replacing a
// symlink (resolv.conf often is one) with an empty file to bind onto.
func bindFileInto(root, f string) error {
	target := filepath.Join(root, f)
	if fi, err := os.Lstat(target); err != nil || !fi.Mode().IsRegular() {
		os.Remove(target)
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(target, nil, 0o644); err != nil {
			return err
		}
	}
	if err := unix.Mount(f, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s into the root: %w", f, err)
	}
	return nil
}

// findDisk returns /dev/vdX of the virtio disk with this serial, waiting
// for it to appear (the block driver probes asynchronously).
func (p LinuxProvisioner) findDisk(serial string) (string, error) {
	wait := p.DiskWait
	if wait <= 0 {
		wait = 5 * time.Second
	}
	deadline := time.Now().Add(wait)
	for {
		if dev, ok := diskBySerial(serial); ok {
			return dev, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no disk with serial %q (disks: %s)", serial, strings.Join(listSerials(), ", "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func diskBySerial(serial string) (string, bool) {
	ents, _ := filepath.Glob("/sys/block/*/serial")
	for _, e := range ents {
		b, err := os.ReadFile(e)
		if err == nil && strings.TrimSpace(string(b)) == serial {
			name := filepath.Base(filepath.Dir(e))
			dev := "/dev/" + name
			if _, err := os.Stat(dev); err == nil {
				return dev, true
			}
		}
	}
	return "", false
}

func listSerials() []string {
	var out []string
	ents, _ := filepath.Glob("/sys/block/*/serial")
	for _, e := range ents {
		b, _ := os.ReadFile(e)
		out = append(out, filepath.Base(filepath.Dir(e))+"="+strings.TrimSpace(string(b)))
	}
	if len(out) == 0 {
		out = []string{"none"}
	}
	return out
}

// loadFilesystem makes sure the kernel knows fstype, loading its module
// from the initramfs (agentproto.InitramfsModulesDir) if it is not built in.
func loadFilesystem(fstype string) error {
	if knownFilesystem(fstype) {
		return nil
	}
	b, err := os.ReadFile(agentproto.InitramfsFSModules)
	if err != nil {
		return fmt.Errorf("filesystem %s is not built into the guest kernel and the initramfs has no module list: %w", fstype, err)
	}
	var mods []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == fstype {
			mods = f[1:]
		}
	}
	for _, m := range mods {
		if err := loadModule(filepath.Join(agentproto.InitramfsModulesDir, m)); err != nil {
			return fmt.Errorf("filesystem %s: load %s: %w", fstype, m, err)
		}
	}
	if !knownFilesystem(fstype) {
		return fmt.Errorf("filesystem %s is unknown to the guest kernel (modules loaded: %v)", fstype, mods)
	}
	return nil
}

func knownFilesystem(fstype string) bool {
	f, err := os.Open("/proc/filesystems")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 0 && fs[len(fs)-1] == fstype {
			return true
		}
	}
	return false
}

// hostPathInRoot maps the guest path p (absolute, clean) to the path the
// agent uses for it when guest paths live in root (the workload root):
// every directory above p's last component is resolved inside root, as
// the workload sees them (RESOLVE_IN_ROOT: absolute symlinks restart at
// root, ".." stops there), so a file operation never lands in the
// initramfs. The last component is followed only when follow is set (and
// it exists). root "" returns p.
func hostPathInRoot(root, p string, follow bool) (string, error) {
	if root == "" {
		return p, nil
	}
	if p == "/" {
		return root, nil
	}
	if follow {
		if real, err := realPathInRoot(root, p); err == nil {
			return real, nil
		}
	}
	dir, err := realPathInRoot(root, path.Dir(p))
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, path.Base(p)), nil
}

// realPathInRoot resolves p inside root and returns the path the kernel
// reached (under root).
func realPathInRoot(root, p string) (string, error) {
	fd, err := openat2InRoot(root, p, unix.O_PATH)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", err
	}
	if real != root && !strings.HasPrefix(real, strings.TrimSuffix(root, "/")+"/") {
		return "", &os.PathError{Op: "resolve", Path: p, Err: unix.EXDEV}
	}
	return real, nil
}

// mkdirAllInRoot creates the guest directory p and its missing parents
// inside root (mode 0755), resolving each component inside root.
func mkdirAllInRoot(root, p string) error {
	if root == "" {
		return os.MkdirAll(p, 0o755)
	}
	if p == "/" {
		return nil
	}
	if _, err := realPathInRoot(root, p); err == nil {
		return nil
	}
	if err := mkdirAllInRoot(root, path.Dir(p)); err != nil {
		return err
	}
	host, err := hostPathInRoot(root, p, false)
	if err != nil {
		return err
	}
	if err := os.Mkdir(host, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
}
