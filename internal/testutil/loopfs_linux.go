package testutil

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// LoopFS describes a filesystem image to create, loop-attach and mount.
type LoopFS struct {
	// Type is the filesystem: "xfs" (made with -m reflink=1), "btrfs" or
	// "ext4".
	Type string
	// Size of the sparse image file in bytes; only written blocks use the
	// host disk. XFS needs at least 300 MiB, btrfs about 128 MiB.
	Size int64
	// MkfsArgs are extra mkfs arguments, appended to the defaults.
	MkfsArgs []string
}

// Default sizes: sparse, so they cost only what tests write.
const (
	XFSSize       = 8 << 30
	SharedXFSSize = 32 << 30
	BtrfsSize     = 8 << 30
)

// mkfsCommands gives the tool and default arguments for each type.
var mkfsCommands = map[string][]string{
	"xfs":   {"mkfs.xfs", "-q", "-f", "-K", "-m", "reflink=1"},
	"btrfs": {"mkfs.btrfs", "-q", "-f"},
	"ext4":  {"mkfs.ext4", "-q", "-F", "-E", "nodiscard"},
}

// MountLoop creates a sparse image of spec.Size bytes under os.TempDir(),
// makes a spec.Type filesystem on it, attaches it to a free loop device,
// mounts it on a fresh directory and returns that directory. t.Cleanup
// unmounts it, detaches the loop device and removes the image; a mount
// still busy at cleanup (a leaked process holding a file) fails the test
// and is detached lazily. Skips unless root with the tools installed.
func MountLoop(t testing.TB, spec LoopFS) string {
	t.Helper()
	mkfs, ok := mkfsCommands[spec.Type]
	if !ok {
		t.Fatalf("testutil.MountLoop: unknown filesystem type %q", spec.Type)
	}
	RequirePrivileged(t, fmt.Sprintf("a loop-mounted %s filesystem", spec.Type), mkfs[0], "losetup", "mount")
	m, err := mountLoop(spec)
	if err != nil {
		t.Fatalf("testutil.MountLoop %s: %v", spec.Type, err)
	}
	t.Cleanup(func() {
		if err := m.unmount(); err != nil {
			t.Errorf("testutil: %v", err)
		}
	})
	return m.dir
}

// XFS returns the mount directory of a fresh, private XFS filesystem with
// reflink (mkfs.xfs -m reflink=1) on an 8 GiB sparse image. About 60 ms.
func XFS(t testing.TB) string {
	t.Helper()
	return MountLoop(t, LoopFS{Type: "xfs", Size: XFSSize})
}

// Btrfs returns the mount directory of a fresh, private btrfs filesystem on
// an 8 GiB sparse image: the second reflink filesystem.
func Btrfs(t testing.TB) string {
	t.Helper()
	return MountLoop(t, LoopFS{Type: "btrfs", Size: BtrfsSize})
}

// shared is the reference-counted XFS mount behind SharedXFS.
var shared struct {
	mu   sync.Mutex
	m    *loopMount
	refs int
}

// SharedXFS returns a fresh directory, private to t, on an XFS (reflink)
// filesystem shared by every test of the binary that is running at the same
// time: the mount (32 GiB sparse) is made by the first user and unmounted
// when the last one's cleanup runs, so parallel tests (and the VMs they boot,
// whose instance directories live here) share one loop device. The test's
// directory is removed at its cleanup.
func SharedXFS(t testing.TB) string {
	t.Helper()
	RequirePrivileged(t, "a loop-mounted XFS filesystem", "mkfs.xfs", "losetup", "mount")
	shared.mu.Lock()
	if shared.m == nil {
		m, err := mountLoop(LoopFS{Type: "xfs", Size: SharedXFSSize})
		if err != nil {
			shared.mu.Unlock()
			t.Fatalf("testutil.SharedXFS: %v", err)
		}
		shared.m = m
	}
	shared.refs++
	root := shared.m.dir
	shared.mu.Unlock()

	release := func() {
		shared.mu.Lock()
		defer shared.mu.Unlock()
		shared.refs--
		if shared.refs > 0 {
			return
		}
		m := shared.m
		shared.m = nil
		if err := m.unmount(); err != nil {
			t.Errorf("testutil.SharedXFS: %v", err)
		}
	}
	dir, err := os.MkdirTemp(root, safeName(t.Name())+"-")
	if err != nil {
		release()
		t.Fatalf("testutil.SharedXFS: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("testutil.SharedXFS: remove %s: %v", dir, err)
		}
		release()
	})
	return dir
}

// Tmpfs mounts a tmpfs of size bytes on a fresh directory and returns it;
// t.Cleanup unmounts it. Useful as a small filesystem to fill up, and as
// "another filesystem" for cross-device copies.
func Tmpfs(t testing.TB, size int64) string {
	t.Helper()
	RequirePrivileged(t, "a tmpfs mount", "mount")
	sweepOnce.Do(sweepStale)
	base, err := os.MkdirTemp("", fmt.Sprintf("zygote-testfs-%d-", os.Getpid()))
	if err != nil {
		t.Fatalf("testutil.Tmpfs: %v", err)
	}
	dir := filepath.Join(base, "mnt")
	if err := os.Mkdir(dir, 0o755); err == nil {
		err = unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", size))
		if err != nil {
			err = fmt.Errorf("mount tmpfs on %s: %w", dir, err)
		}
	}
	if err != nil {
		_ = os.RemoveAll(base)
		t.Fatalf("testutil.Tmpfs: %v", err)
	}
	m := &loopMount{base: base, dir: dir}
	t.Cleanup(func() {
		if err := m.unmount(); err != nil {
			t.Errorf("testutil: %v", err)
		}
	})
	return dir
}

// Ext4Dir returns t.TempDir() when it is on ext4 (the work disk; no
// reflink), and skips the test otherwise: tests of the non-reflink
// fallback need a filesystem that really lacks reflink.
func Ext4Dir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatalf("testutil.Ext4Dir: statfs %s: %v", dir, err)
	}
	if st.Type != unix.EXT4_SUPER_MAGIC {
		skipOrFail(t, fmt.Sprintf("the non-reflink path needs %s on ext4 (filesystem magic is 0x%x); set TMPDIR to an ext4 directory", dir, st.Type))
	}
	return dir
}

// loopMount is one mount this process made: base holds the image (if any)
// and the mount point dir; dev is the loop device ("" for tmpfs).
type loopMount struct {
	base, dir, dev string
}

// mountLoop does the work of MountLoop, undoing its own steps on failure.
func mountLoop(spec LoopFS) (m *loopMount, err error) {
	sweepOnce.Do(sweepStale)
	base, err := os.MkdirTemp("", fmt.Sprintf("zygote-testfs-%d-", os.Getpid()))
	if err != nil {
		return nil, err
	}
	m = &loopMount{base: base, dir: filepath.Join(base, "mnt")}
	defer func() {
		if err != nil {
			err = errors.Join(err, m.unmount())
		}
	}()
	img := filepath.Join(base, spec.Type+".img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		return m, err
	}
	if err := os.Truncate(img, spec.Size); err != nil {
		return m, err
	}
	mkfs := append(append(append([]string(nil), mkfsCommands[spec.Type]...), spec.MkfsArgs...), img)
	if _, err := run(mkfs[0], mkfs[1:]...); err != nil {
		return m, err
	}
	dev, err := run("losetup", "--find", "--show", img)
	if err != nil {
		return m, err
	}
	m.dev = strings.TrimSpace(dev)
	if err := os.Mkdir(m.dir, 0o755); err != nil {
		return m, err
	}
	if err := unix.Mount(m.dev, m.dir, spec.Type, 0, ""); err != nil {
		return m, fmt.Errorf("mount %s (%s) on %s: %w", m.dev, spec.Type, m.dir, err)
	}
	return m, nil
}

// unmount tears down what mountLoop or Tmpfs made; it tolerates steps that
// never happened. A mount that stays busy for 5 s is detached lazily and
// reported, because a process the test leaked still holds it.
func (m *loopMount) unmount() error {
	var errs []error
	if isMountPoint(m.dir) {
		err := unix.Unmount(m.dir, 0)
		for deadline := time.Now().Add(5 * time.Second); errors.Is(err, unix.EBUSY) && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
			err = unix.Unmount(m.dir, 0)
		}
		if errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("unmount %s: still busy after 5 s (a process the test started still uses it); detached lazily", m.dir))
			err = unix.Unmount(m.dir, unix.MNT_DETACH)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m.dir, err))
		}
	}
	if m.dev != "" {
		if _, err := run("losetup", "-d", m.dev); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(m.base); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// run runs a tool and returns its stdout; the error carries its stderr.
func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(ee.Stderr)))
		}
		return "", fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return string(out), nil
}

func isMountPoint(dir string) bool {
	mounts, err := readMounts()
	if err != nil {
		return false
	}
	for _, mnt := range mounts {
		if mnt.target == dir {
			return true
		}
	}
	return false
}

type mountEntry struct{ source, target string }

// readMounts parses /proc/self/mountinfo: field 5 is the mount point,
// the field after " - " and the type is the source.
func readMounts() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(tail) < 2 {
			continue
		}
		out = append(out, mountEntry{source: tail[1], target: unescapeMount(fields[4])})
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

var (
	sweepOnce sync.Once
	staleName = regexp.MustCompile(`^zygote-testfs-(\d+)-`)
)

// sweepStale removes what earlier test binaries that died without cleanup
// left under os.TempDir(): mounts, loop devices and image directories named
// zygote-testfs-<pid>-* whose pid is not running. Best effort; errors are
// ignored (another binary may be sweeping the same leftovers).
func sweepStale() {
	tmp := os.TempDir()
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	mounts, _ := readMounts()
	for _, e := range entries {
		match := staleName.FindStringSubmatch(e.Name())
		if match == nil || !e.IsDir() {
			continue
		}
		pid, err := strconv.Atoi(match[1])
		if err != nil || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		base := filepath.Join(tmp, e.Name())
		m := &loopMount{base: base, dir: filepath.Join(base, "mnt")}
		for _, mnt := range mounts {
			if mnt.target == m.dir && strings.HasPrefix(mnt.source, "/dev/loop") {
				m.dev = mnt.source
			}
		}
		if isMountPoint(m.dir) {
			_ = unix.Unmount(m.dir, unix.MNT_DETACH)
		}
		if m.dev != "" {
			_, _ = run("losetup", "-d", m.dev)
		}
		_ = os.RemoveAll(base)
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// safeName turns a test name into a directory name.
func safeName(name string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' || r == os.PathSeparator {
			return '_'
		}
		return r
	}, name)
}
