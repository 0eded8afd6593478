//go:build linux

package clone

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/testutil"
)

// TestRejectsBadArguments: each bad call fails with its error class and
// changes nothing on disk.
func TestRejectsBadArguments(t *testing.T) {
	base := t.TempDir()
	src := pageFiles(t, base, "memory")
	file := filepath.Join(base, "a-file")
	writeSparse(t, file, page, []segment{{0, page}}, 2)
	link := filepath.Join(base, "link")
	if err := os.Symlink("a-file", link); err != nil {
		t.Fatal(err)
	}
	notExist := func(err error) bool { return errors.Is(err, fs.ErrNotExist) }
	type copyFunc func(context.Context, string, string, Options) (Stats, error)
	cases := []struct {
		name     string
		call     copyFunc
		src, dst string
		is       func(error) bool
	}{
		{"Dir: missing source", Dir, filepath.Join(base, "nope"), filepath.Join(base, "d1"), errdefs.IsNotFound},
		{"Dir: source is a file", Dir, file, filepath.Join(base, "d2"), errdefs.IsInvalidArgument},
		{"Dir: destination inside source", Dir, src, filepath.Join(src, "copy"), errdefs.IsInvalidArgument},
		{"Dir: destination is the source", Dir, src, src, errdefs.IsInvalidArgument},
		{"Dir: destination is a file", Dir, src, file, errdefs.IsAlreadyExists},
		{"Dir: destination parent missing", Dir, src, filepath.Join(base, "no", "parent"), notExist},
		{"File: missing source", File, filepath.Join(base, "nope"), filepath.Join(base, "d1"), errdefs.IsNotFound},
		{"File: source is a directory", File, src, filepath.Join(base, "d2"), errdefs.IsInvalidArgument},
		{"File: source is a symlink", File, link, filepath.Join(base, "d3"), errdefs.IsInvalidArgument},
		{"File: destination exists", File, file, link, errdefs.IsAlreadyExists},
		{"File: destination parent missing", File, file, filepath.Join(base, "no", "parent"), notExist},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := entries(t, base)
			opts, _ := quietOpts()
			if _, err := tc.call(context.Background(), tc.src, tc.dst, opts); err == nil || !tc.is(err) {
				t.Fatalf("(%s, %s) = %v, want the other error class", tc.src, tc.dst, err)
			}
			if after := entries(t, base); !slices.Equal(before, after) {
				t.Errorf("a rejected call changed the tree:\n  before %v\n  after  %v", before, after)
			}
		})
	}
}

// TestSpecialFileNeedsSkip: with a Skip that keeps everything, a named pipe
// is an error, and the partial copy is removed.
func TestSpecialFileNeedsSkip(t *testing.T) {
	base := t.TempDir()
	src := pageFiles(t, base, "a-memory")
	if err := unix.Mkfifo(filepath.Join(src, "b-fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, _ := quietOpts()
	opts.Skip = func(string, fs.DirEntry) bool { return false }
	_, err := Dir(context.Background(), src, filepath.Join(base, "dst"), opts)
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "b-fifo") {
		t.Fatalf("Dir over a fifo: %v, want ErrInvalidArgument naming it", err)
	}
	assertNothingLeft(t, base, "src")
}

func TestSkipOption(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	for _, d := range []string{"keep", "cache/deep"} {
		if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"keep/a", "cache/deep/b", "top.log"} {
		writeSparse(t, filepath.Join(src, f), page, []segment{{0, page}}, 3)
	}
	var seen []string
	opts, _ := quietOpts()
	opts.Skip = func(rel string, d fs.DirEntry) bool {
		seen = append(seen, rel)
		return rel == "cache"
	}
	dst := filepath.Join(base, "dst")
	stats, err := Dir(context.Background(), src, dst, opts)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"keep", "keep/a", "top.log"}; !slices.Equal(entries(t, dst), want) {
		t.Errorf("copy holds %v, want %v (a custom Skip replaces the default)", entries(t, dst), want)
	}
	if want := []string{"cache", "keep", "keep/a", "top.log"}; !slices.Equal(seen, want) {
		t.Errorf("Skip saw %v, want %v (a skipped directory is not descended)", seen, want)
	}
	if stats.Skipped != 1 {
		t.Errorf("Skipped = %d, want 1", stats.Skipped)
	}
}

func TestDefaultSkip(t *testing.T) {
	mfs := fstest.MapFS{
		"memory":                       {},
		"state":                        {},
		"console.log":                  {},
		"qemu.pid":                     {},
		"vm.sock":                      {},
		"qmp":                          {Mode: fs.ModeSocket},
		"serial":                       {Mode: fs.ModeNamedPipe},
		".memory" + tempMarker + "abc": {},
		"logs.d":                       {Mode: fs.ModeDir},
		"x.log":                        {Mode: fs.ModeDir}, // a directory named *.log is kept
		".hidden":                      {},
		"disk.img":                     {},
	}
	want := map[string]bool{
		"memory": false, "state": false, "console.log": true, "qemu.pid": true, "vm.sock": true, "qmp": true,
		"serial": true, ".memory" + tempMarker + "abc": true, "logs.d": false, "x.log": false, ".hidden": false, "disk.img": false,
	}
	des, err := fs.ReadDir(mfs, ".")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range des {
		if got := DefaultSkip(d.Name(), d); got != want[d.Name()] {
			t.Errorf("DefaultSkip(%s) = %v, want %v", d.Name(), got, want[d.Name()])
		}
	}
}

func TestIsTempName(t *testing.T) {
	for name, want := range map[string]bool{
		".memory" + tempMarker + "0a1b": true,
		".copy" + tempMarker + "ffff":   true,
		"memory":                        false,
		"x" + tempMarker + "1":          false, // not hidden: not ours
		".memory":                       false,
	} {
		if got := IsTempName(name); got != want {
			t.Errorf("IsTempName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestStrictFromEnv(t *testing.T) {
	cases := []struct {
		val     string
		want    bool
		invalid bool
	}{
		{"", false, false}, {"1", true, false}, {"true", true, false}, {"0", false, false},
		{"false", false, false}, {"yes", false, true}, {"2", false, true},
	}
	for _, tc := range cases {
		t.Setenv(EnvStrict, tc.val)
		got, err := StrictFromEnv()
		if got != tc.want || (err != nil) != tc.invalid || (err != nil && !errdefs.IsInvalidArgument(err)) {
			t.Errorf("%s=%q: StrictFromEnv() = %v, %v; want %v, invalid %v", EnvStrict, tc.val, got, err, tc.want, tc.invalid)
		}
	}
}

// TestProbe: the startup check reports reflink where it works, says why
// where it does not, and leaves no file behind.
func TestProbe(t *testing.T) {
	cases := []struct {
		name    string
		dir     func(testing.TB) string
		reflink bool
		fs      string
	}{
		{"xfs", testutil.SharedXFS, true, "xfs"},
		{"btrfs", testutil.Btrfs, true, "btrfs"},
		{"ext4", testutil.Ext4Dir, false, "ext4"},
		{"tmpfs", func(t testing.TB) string { return testutil.Tmpfs(t, 1<<20) }, false, "tmpfs"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir(t)
			res, err := Probe(dir)
			if err != nil {
				t.Fatal(err)
			}
			if res.Reflink != tc.reflink || res.Filesystem != tc.fs || res.Dir != dir {
				t.Errorf("Probe = %+v, want reflink %v on %s", res, tc.reflink, tc.fs)
			}
			if tc.reflink && (res.Err != nil || !strings.Contains(res.String(), "reflink works")) {
				t.Errorf("Probe = %+v, line %q", res, res)
			}
			if !tc.reflink && (!errors.Is(res.Err, unix.EOPNOTSUPP) || !strings.Contains(res.String(), "mkfs.xfs -m reflink=1")) {
				t.Errorf("Probe = %+v, line %q: want EOPNOTSUPP and the fix", res, res)
			}
			assertNothingLeft(t, dir)
		})
	}
	if _, err := Probe(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Probe of a missing directory: %v", err)
	}
}

// TestMixedStrategy: a tree that spans filesystems (a tmpfs mounted inside
// an XFS source) reflinks what it can, copies the rest, and says "mixed".
func TestMixedStrategy(t *testing.T) {
	root := testutil.SharedXFS(t)
	src := filepath.Join(root, "src")
	mnt := filepath.Join(src, "on-tmpfs")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	writeSparse(t, filepath.Join(src, "memory"), 64*page, []segment{{0, 64 * page}}, 1)
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	writeSparse(t, filepath.Join(mnt, "state"), 2*page, []segment{{0, 2 * page}}, 2)
	opts, _ := quietOpts()
	dst := filepath.Join(root, "dst")
	stats, err := Dir(context.Background(), src, dst, opts)
	if err != nil {
		t.Fatal(err)
	}
	if stats.Strategy != StrategyMixed || stats.ReflinkedBytes != 64*page || stats.CopiedBytes != 2*page {
		t.Errorf("stats %+v, want mixed: 64 pages reflinked, 2 copied", stats)
	}
	if !equalBytes(t, filepath.Join(mnt, "state"), filepath.Join(dst, "on-tmpfs", "state")) {
		t.Error("copied file differs")
	}
}

// TestFallbackDecidedOncePerFilesystem: on ext4 FICLONE is refused once,
// logged once, and not retried for every file.
func TestFallbackDecidedOncePerFilesystem(t *testing.T) {
	base := testutil.Ext4Dir(t)
	src := pageFiles(t, base, "a", "b", "c", "d")
	opts, logs := quietOpts()
	stats, err := Dir(context.Background(), src, filepath.Join(base, "dst"), opts)
	if err != nil {
		t.Fatal(err)
	}
	warns := logs.attrs("reflink unavailable, falling back to a sparse copy")
	if len(warns) != 1 || warns[0]["dst_fs"] != "ext4" || !strings.Contains(warns[0]["error"], "not supported") {
		t.Errorf("fallback warnings %v, want exactly one naming ext4 and the errno", warns)
	}
	if stats.Strategy != StrategyCopyFileRange || stats.Files != 4 {
		t.Errorf("stats %+v", stats)
	}
}

// TestOutOfSpace: a copy that fills the disk fails with
// ErrResourceExhausted and removes everything it wrote, so the space is
// back; on the copy_file_range path (a small ext4) and the read/write path
// (ext4 to a small tmpfs).
func TestOutOfSpace(t *testing.T) {
	cases := []struct {
		name string
		// dirs returns where the source and the copy live.
		dirs func(t *testing.T) (string, string)
		size int64
	}{
		{"copy_file_range on a full ext4", func(t *testing.T) (string, string) {
			d := testutil.MountLoop(t, testutil.LoopFS{Type: "ext4", Size: 48 << 20})
			return d, d
		}, 28 << 20},
		{"readwrite to a full tmpfs", func(t *testing.T) (string, string) {
			return testutil.Ext4Dir(t), testutil.Tmpfs(t, 16<<20)
		}, 24 << 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srcParent, dstParent := tc.dirs(t)
			src := pageFiles(t, srcParent, "state")
			writeSparse(t, filepath.Join(src, "memory"), tc.size+(64<<20), []segment{{0, tc.size}}, 9)
			parent, dst := freshDst(t, dstParent)
			free := freeBytes(t, dstParent)
			opts, _ := quietOpts()
			_, err := Dir(context.Background(), src, dst, opts)
			if !errdefs.IsResourceExhausted(err) || !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("Dir onto a full disk: %v, want ErrResourceExhausted (ENOSPC)", err)
			}
			assertNothingLeft(t, parent)
			if got := freeBytes(t, dstParent); got < free-(1<<20) {
				t.Errorf("free space %d after the failed copy, was %d: the partial copy was not removed", got, free)
			}
		})
	}
}

func freeBytes(t testing.TB, dir string) int64 {
	t.Helper()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil { // settle delayed frees
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(d.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bfree) * st.Bsize
}

// TestOwnerKept: a file owned by another user (a jailed VMM's uid) keeps
// its owner in the copy, so the jailed process can still open it.
func TestOwnerKept(t *testing.T) {
	testutil.RequirePrivileged(t, "chown to another uid")
	dir := testutil.Ext4Dir(t)
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o750); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(src, "memory")
	writeSparse(t, f, page, []segment{{0, page}}, 1)
	if err := os.Chmod(f, 0o4750); err != nil { // set-uid survives the chown
		t.Fatal(err)
	}
	for _, p := range []string{f, src} {
		if err := os.Lchown(p, 1000, 1000); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(f, 0o4750); err != nil {
		t.Fatal(err)
	}
	opts, _ := quietOpts()
	dst := filepath.Join(dir, "dst")
	if _, err := Dir(context.Background(), src, dst, opts); err != nil {
		t.Fatal(err)
	}
	for _, rel := range []string{"", "memory"} {
		s, d := lstat(t, filepath.Join(src, rel)), lstat(t, filepath.Join(dst, rel))
		if s.Uid != d.Uid || s.Gid != d.Gid || s.Mode != d.Mode {
			t.Errorf("%q: uid/gid/mode %d/%d/%o, want %d/%d/%o", rel, d.Uid, d.Gid, d.Mode, s.Uid, s.Gid, s.Mode)
		}
	}
}
