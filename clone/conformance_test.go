//go:build linux

package clone

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/testutil"
)

// target is one filesystem setup the conformance suite runs on: where the
// source tree and the copy live, and the path the data must take there.
type target struct {
	name string
	// dirs returns the parents for the source tree and the copy.
	dirs func(t *testing.T) (srcParent, dstParent string)
	want Strategy
}

func sameFS(mount func(testing.TB) string) func(*testing.T) (string, string) {
	return func(t *testing.T) (string, string) { d := mount(t); return d, d }
}

// targets covers every copy path: reflink on XFS and btrfs, the
// copy_file_range fallback on the ext4 work disk, and read/write across
// filesystems (ext4 to tmpfs, where copy_file_range says EXDEV).
func targets() []target {
	return []target{
		{"xfs", sameFS(testutil.SharedXFS), StrategyReflink},
		{"btrfs", sameFS(testutil.Btrfs), StrategyReflink},
		{"ext4", sameFS(testutil.Ext4Dir), StrategyCopyFileRange},
		{"ext4-to-tmpfs", func(t *testing.T) (string, string) {
			return testutil.Ext4Dir(t), testutil.Tmpfs(t, 256<<20)
		}, StrategyReadWrite},
	}
}

// fixture is a source tree that looks like an instance directory.
type fixture struct {
	root string
	// files are the regular files that must be copied, relative.
	files []string
	// skipped are the entries DefaultSkip must leave out.
	skipped []string
	// links maps each symlink to the target the copy must hold, with
	// "$DST" standing for the copy's root.
	links map[string]string
}

const memSize = 8<<20 + 3*page

// memSegments: a leading hole, three data runs, a trailing hole.
var memSegments = []segment{{16 * page, 32 * page}, {1 << 20, 1<<20 + 64*page}, {3 << 20, 3<<20 + page}}

func makeFixture(t *testing.T, parent string) fixture {
	t.Helper()
	root, err := os.MkdirTemp(parent, "src-")
	if err != nil {
		t.Fatal(err)
	}
	p := func(rel string) string { return filepath.Join(root, rel) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	writeSparse(t, p("memory"), memSize, memSegments, 1)
	writeSparse(t, p("state"), 51*1024+7, []segment{{0, 51*1024 + 7}}, 2)
	writeSparse(t, p("empty"), 0, nil, 3)
	writeSparse(t, p("balloon"), 64<<20, nil, 4) // all hole
	must(os.MkdirAll(p("disks/ro"), 0o755))
	writeSparse(t, p("disks/rootfs.img"), 1<<20, []segment{{0, 1 << 20}}, 5)
	must(os.Chmod(p("disks/rootfs.img"), 0o600))
	writeSparse(t, p("disks/ro/seed"), page, []segment{{0, page}}, 6)
	must(os.Chmod(p("disks/ro/seed"), 0o444))
	must(os.Chmod(p("disks/ro"), 0o555))
	must(os.MkdirAll(p("nested/empty-dir"), 0o750))
	must(os.Chmod(p("nested/empty-dir"), 0o750))
	if os.Geteuid() == 0 {
		must(os.Lchown(p("disks/rootfs.img"), 1234, 4321))
		must(os.Lchown(p("nested"), 1234, 4321))
	}
	must(os.Symlink("state", p("link-rel")))
	must(os.Symlink(p("disks/rootfs.img"), p("link-abs-in")))
	must(os.Symlink("/etc/hostname", p("link-abs-out")))
	must(os.Symlink("missing", p("link-dangling")))
	// What must not travel: logs, pid files, live sockets, pipes, temporaries.
	must(os.WriteFile(p("console.log"), []byte("boot\n"), 0o644))
	must(os.WriteFile(p("qemu.pid"), []byte("42\n"), 0o644))
	must(unix.Mkfifo(p("serial.fifo"), 0o600))
	must(os.WriteFile(p(".memory"+tempMarker+"0123"), []byte("half a copy"), 0o600))
	l, err := net.Listen("unix", p("qmp.sock"))
	must(err)
	t.Cleanup(func() { l.Close() })
	return fixture{
		root:    root,
		files:   []string{"balloon", "disks/ro/seed", "disks/rootfs.img", "empty", "memory", "state"},
		skipped: []string{".memory" + tempMarker + "0123", "console.log", "qemu.pid", "qmp.sock", "serial.fifo"},
		links: map[string]string{
			"link-rel": "state", "link-abs-in": "$DST/disks/rootfs.img",
			"link-abs-out": "/etc/hostname", "link-dangling": "missing",
		},
	}
}

func (f fixture) dirs() []string { return []string{"disks", "disks/ro", "nested", "nested/empty-dir"} }

// wantEntries is what a copy of the fixture must contain, exactly.
func (f fixture) wantEntries() []string {
	var out []string
	out = append(out, f.files...)
	out = append(out, f.dirs()...)
	for l := range f.links {
		out = append(out, l)
	}
	slices.Sort(out)
	return out
}

// TestConformance runs the same contract on every filesystem setup: the
// copy is byte-identical, made of new inodes, keeps holes, modes, owners
// and symlinks, leaves out what it must, is independent of its source in
// both directions, never overwrites, and leaves nothing behind when it
// fails (strict mode, cancellation).
func TestConformance(t *testing.T) {
	for _, tg := range targets() {
		t.Run(tg.name, func(t *testing.T) {
			srcParent, dstParent := tg.dirs(t)
			t.Run("tree", func(t *testing.T) { testTree(t, tg, srcParent, dstParent) })
			t.Run("independence", func(t *testing.T) { testIndependence(t, srcParent, dstParent) })
			t.Run("strict", func(t *testing.T) { testStrict(t, tg, srcParent, dstParent) })
			t.Run("never-overwrites", func(t *testing.T) { testNeverOverwrites(t, srcParent, dstParent) })
			t.Run("file", func(t *testing.T) { testFile(t, tg, srcParent, dstParent) })
			t.Run("cancel", func(t *testing.T) { testCancel(t, srcParent, dstParent) })
		})
	}
}

// freshDst returns an empty directory under dstParent to hold one
// destination, and the destination path inside it (not created).
func freshDst(t *testing.T, dstParent string) (parent, dst string) {
	t.Helper()
	parent, err := os.MkdirTemp(dstParent, "dst-")
	if err != nil {
		t.Fatal(err)
	}
	return parent, filepath.Join(parent, "copy")
}

func testTree(t *testing.T, tg target, srcParent, dstParent string) {
	fx := makeFixture(t, srcParent)
	parent, dst := freshDst(t, dstParent)
	opts, logs := quietOpts()
	stats, err := Dir(context.Background(), fx.root, dst, opts)
	if err != nil {
		t.Fatalf("Dir: %v", err)
	}
	assertNothingLeft(t, parent, "copy")
	if got, want := entries(t, dst), fx.wantEntries(); !slices.Equal(got, want) {
		t.Fatalf("copy holds\n  %v\nwant\n  %v", got, want)
	}

	var bytes, data int64
	for _, rel := range fx.files {
		s, d := filepath.Join(fx.root, rel), filepath.Join(dst, rel)
		ss, ds := lstat(t, s), lstat(t, d)
		if digest(t, s) != digest(t, d) {
			t.Errorf("%s: content differs", rel)
		}
		if ss.Size != ds.Size {
			t.Errorf("%s: size %d, want %d", rel, ds.Size, ss.Size)
		}
		if ss.Ino == ds.Ino && ss.Dev == ds.Dev {
			t.Errorf("%s: the copy is the same inode", rel)
		}
		if ss.Mode != ds.Mode || ss.Uid != ds.Uid || ss.Gid != ds.Gid {
			t.Errorf("%s: mode/uid/gid %o/%d/%d, want %o/%d/%d", rel, ds.Mode, ds.Uid, ds.Gid, ss.Mode, ss.Uid, ss.Gid)
		}
		sm, dm := dataMap(t, s), dataMap(t, d)
		if !slices.Equal(sm, dm) {
			t.Errorf("%s: data map %v, want %v (holes must stay holes)", rel, dm, sm)
		}
		bytes += ss.Size
		for _, seg := range sm {
			data += seg.End - seg.Off
		}
	}
	if got := dataMap(t, filepath.Join(dst, "memory")); !slices.Equal(got, memSegments) {
		t.Errorf("memory data map %v, want exactly %v", got, memSegments)
	}
	if st := lstat(t, filepath.Join(dst, "balloon")); st.Blocks != 0 {
		t.Errorf("balloon (all hole) uses %d blocks in the copy", st.Blocks)
	}
	for _, rel := range append(fx.dirs(), ".") {
		ss, ds := lstat(t, filepath.Join(fx.root, rel)), lstat(t, filepath.Join(dst, rel))
		if ss.Mode != ds.Mode || ss.Uid != ds.Uid || ss.Gid != ds.Gid {
			t.Errorf("dir %s: mode/uid/gid %o/%d/%d, want %o/%d/%d", rel, ds.Mode, ds.Uid, ds.Gid, ss.Mode, ss.Uid, ss.Gid)
		}
	}
	for rel, want := range fx.links {
		got, err := os.Readlink(filepath.Join(dst, rel))
		if err != nil {
			t.Fatal(err)
		}
		if want = strings.ReplaceAll(want, "$DST", dst); got != want {
			t.Errorf("symlink %s -> %q, want %q", rel, got, want)
		}
	}

	want := Stats{Strategy: tg.want, Files: len(fx.files), Dirs: len(fx.dirs()) + 1, Symlinks: len(fx.links),
		Skipped: len(fx.skipped), Bytes: bytes}
	if tg.want == StrategyReflink {
		want.ReflinkedBytes = bytes
	} else {
		want.CopiedBytes, want.HoleBytes = data, bytes-data
	}
	got := stats
	got.Filesystem, got.Duration = "", 0
	if got != want {
		t.Errorf("stats\n  %+v\nwant\n  %+v", got, want)
	}
	if stats.Duration <= 0 || stats.Filesystem == "" || strings.HasPrefix(stats.Filesystem, "fs-0x") {
		t.Errorf("stats duration %v, filesystem %q", stats.Duration, stats.Filesystem)
	}
	lines := logs.attrs("clone dir")
	if len(lines) != 1 || lines[0]["clone_strategy"] != string(tg.want) {
		t.Errorf("log lines %v, want one with clone_strategy=%s", lines, tg.want)
	}
}

// testIndependence: writing the copy leaves the source unchanged and
// writing the source leaves the copy unchanged (invariant 2), in data and
// in holes.
func testIndependence(t *testing.T, srcParent, dstParent string) {
	fx := makeFixture(t, srcParent)
	_, dst := freshDst(t, dstParent)
	opts, _ := quietOpts()
	if _, err := Dir(context.Background(), fx.root, dst, opts); err != nil {
		t.Fatal(err)
	}
	srcMem, dstMem := filepath.Join(fx.root, "memory"), filepath.Join(dst, "memory")
	srcBefore := digest(t, srcMem)
	dirty := []byte(strings.Repeat("fork wrote this ", page/16))
	writeAt(t, dstMem, memSegments[1].Off+page, dirty) // in data
	writeAt(t, dstMem, 0, dirty)                       // in the leading hole
	if digest(t, srcMem) != srcBefore {
		t.Fatal("writing the copy changed the source")
	}
	if got := dataMap(t, srcMem); !slices.Equal(got, memSegments) {
		t.Errorf("writing the copy changed the source's data map: %v", got)
	}
	dstBefore := digest(t, dstMem)
	writeAt(t, srcMem, memSegments[0].Off, []byte(strings.Repeat("source re-standby ", page/18)))
	writeAt(t, srcMem, memSize-page, dirty) // in the trailing hole
	if digest(t, dstMem) != dstBefore {
		t.Fatal("writing the source changed the copy")
	}
}

func testStrict(t *testing.T, tg target, srcParent, dstParent string) {
	fx := makeFixture(t, srcParent)
	parent, dst := freshDst(t, dstParent)
	opts, _ := quietOpts()
	opts.Strict = true
	stats, err := Dir(context.Background(), fx.root, dst, opts)
	if tg.want == StrategyReflink {
		if err != nil || stats.Strategy != StrategyReflink {
			t.Fatalf("strict on a reflink filesystem: %v, strategy %s", err, stats.Strategy)
		}
		return
	}
	var rre *ReflinkRequiredError
	if !errors.As(err, &rre) || !errdefs.IsNotImplemented(err) {
		t.Fatalf("strict on %s: err %v, want a *ReflinkRequiredError matching ErrNotImplemented", tg.name, err)
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EXDEV) {
		t.Errorf("strict error does not carry the FICLONE errno: %v", err)
	}
	for _, want := range []string{filepath.Join(fx.root, ""), "mkfs.xfs -m reflink=1", "btrfs", "unset " + EnvStrict, "ext4"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("strict error %q does not mention %q", err, want)
		}
	}
	assertNothingLeft(t, parent)
}

func testNeverOverwrites(t *testing.T, srcParent, dstParent string) {
	fx := makeFixture(t, srcParent)
	opts, _ := quietOpts()
	parent, dst := freshDst(t, dstParent)
	if err := os.Mkdir(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "precious"), []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Dir(context.Background(), fx.root, dst, opts); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Dir into a non-empty directory: %v, want ErrAlreadyExists", err)
	}
	if got := entries(t, dst); !slices.Equal(got, []string{"precious"}) {
		t.Errorf("the non-empty destination changed: %v", got)
	}
	assertNothingLeft(t, parent, "copy")

	// An empty directory is accepted and filled.
	if err := os.Remove(filepath.Join(dst, "precious")); err != nil {
		t.Fatal(err)
	}
	if _, err := Dir(context.Background(), fx.root, dst, opts); err != nil {
		t.Fatalf("Dir into an empty directory: %v", err)
	}
	if got := entries(t, dst); !slices.Equal(got, fx.wantEntries()) {
		t.Errorf("copy into an empty directory holds %v", got)
	}
	assertNothingLeft(t, parent, "copy")
}

func testFile(t *testing.T, tg target, srcParent, dstParent string) {
	fx := makeFixture(t, srcParent)
	parent, dst := freshDst(t, dstParent)
	src := filepath.Join(fx.root, "memory")
	opts, logs := quietOpts()
	stats, err := File(context.Background(), src, dst, opts)
	if err != nil {
		t.Fatalf("File: %v", err)
	}
	if stats.Strategy != tg.want || stats.Files != 1 || stats.Bytes != memSize {
		t.Errorf("stats %+v, want strategy %s, 1 file of %d bytes", stats, tg.want, memSize)
	}
	if digest(t, src) != digest(t, dst) || !slices.Equal(dataMap(t, dst), memSegments) {
		t.Error("File copy differs in content or holes")
	}
	if l := logs.attrs("clone file"); len(l) != 1 || l[0]["clone_strategy"] != string(tg.want) {
		t.Errorf("log lines %v", l)
	}
	before := digest(t, dst)
	if _, err := File(context.Background(), filepath.Join(fx.root, "state"), dst, opts); !errdefs.IsAlreadyExists(err) {
		t.Errorf("File over an existing file: %v, want ErrAlreadyExists", err)
	}
	if digest(t, dst) != before {
		t.Error("File changed an existing destination")
	}
	assertNothingLeft(t, parent, "copy")
}

// testCancel: a cancelled context fails the call and leaves nothing.
func testCancel(t *testing.T, srcParent, dstParent string) {
	fx := makeFixture(t, srcParent)
	parent, dst := freshDst(t, dstParent)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	opts, _ := quietOpts()
	if _, err := Dir(ctx, fx.root, dst, opts); !errors.Is(err, context.Canceled) {
		t.Fatalf("Dir with a cancelled context: %v", err)
	}
	assertNothingLeft(t, parent)
}
