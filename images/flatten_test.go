package images

import (
	"archive/tar"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/images/imagestest"
)

// layeredImage exercises every flattening rule across three layers.
func layeredImage(t testing.TB) v1.Image {
	t.Helper()
	type E = imagestest.Entry
	l1 := imagestest.Layer(t, []E{
		{Name: "etc/", Type: tar.TypeDir},
		{Name: "etc/keep", Body: []byte("keep")},
		{Name: "etc/gone", Body: []byte("gone")},
		{Name: "opq/", Type: tar.TypeDir},
		{Name: "opq/lower1", Body: []byte("l1")},
		{Name: "opq/sub/", Type: tar.TypeDir},
		{Name: "opq/sub/lower2", Body: []byte("l2")},
		{Name: "opq2/", Type: tar.TypeDir},
		{Name: "opq2/sub/", Type: tar.TypeDir},
		{Name: "opq2/sub/lower", Body: []byte("hidden by the opaque parent")},
		{Name: "data/", Type: tar.TypeDir, Mode: 0o750, UID: 1000, GID: 1001},
		{Name: "data/orig", Body: []byte("hardlinked"), Mode: 0o640, UID: 1000, GID: 1001},
		{Name: "data/replaced-dir/", Type: tar.TypeDir},
		{Name: "data/replaced-dir/x", Body: []byte("x")},
		{Name: "lib", Type: tar.TypeSymlink, Linkname: "usr/lib"},
		{Name: "usr/lib/", Type: tar.TypeDir},
	})
	l2 := imagestest.Layer(t, []E{
		{Name: "etc/.wh.gone"},
		{Name: "opq/new-before", Body: []byte("same layer, before the marker")},
		{Name: "opq/.wh..wh..opq"},
		{Name: "opq/new-after", Body: []byte("same layer, after the marker")},
		{Name: "data/link", Type: tar.TypeLink, Linkname: "data/orig"},
		{Name: "opq2/sub/upper", Body: []byte("same layer, no dir entry")},
		{Name: "opq2/.wh..wh..opq"},
		{Name: "data/replaced-dir", Body: []byte("now a file")},
		{Name: "bin/", Type: tar.TypeDir},
		{Name: "bin/suid", Body: []byte("#!/bin/sh\n"), Mode: 0o4755, UID: 0, GID: 50},
		{Name: "bin/rel", Type: tar.TypeSymlink, Linkname: "../etc/keep"},
		{Name: "bin/abs", Type: tar.TypeSymlink, Linkname: "/etc/keep"},
		{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
		{Name: "xattr", Body: []byte("x"), Xattrs: map[string]string{"user.zygote": "yes", "security.capability": "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}},
		{Name: "lib/through-symlink", Body: []byte("in usr/lib")},
		{Name: "abslib", Type: tar.TypeSymlink, Linkname: "/usr/lib"},
		{Name: "abslib/via-absolute", Body: []byte("inside the root, not the host's /usr/lib")},
		{Name: "dev/", Type: tar.TypeDir},
		{Name: "dev/fifo", Type: tar.TypeFifo, Mode: 0o600},
	})
	l3 := imagestest.Layer(t, []E{
		{Name: "etc/keep", Body: []byte("keep v3"), Mode: 0o600, UID: 7, GID: 8},
	})
	return imagestest.Image(t, v1.Config{
		Entrypoint: []string{"/bin/suid"}, Cmd: []string{"-x"},
		Env: []string{"A=1", "B=two=2"}, WorkingDir: "/data", User: "1000",
	}, l1, l2, l3)
}

// checkTree verifies the flattened tree of layeredImage under root.
func checkTree(t *testing.T, root string) {
	t.Helper()
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Errorf("read %s: %v", p, err)
		}
		return string(b)
	}
	lstat := func(p string) *syscall.Stat_t {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(root, p), &st); err != nil {
			t.Fatalf("lstat %s: %v", p, err)
		}
		return &st
	}
	absent := func(p string) {
		if _, err := os.Lstat(filepath.Join(root, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s should be gone (whiteout/opaque), lstat: %v", p, err)
		}
	}
	if got := read("etc/keep"); got != "keep v3" {
		t.Errorf("etc/keep = %q", got)
	}
	if st := lstat("etc/keep"); st.Mode&0o7777 != 0o600 || st.Uid != 7 || st.Gid != 8 {
		t.Errorf("etc/keep mode %o owner %d:%d", st.Mode&0o7777, st.Uid, st.Gid)
	}
	absent("etc/gone")
	absent("opq/lower1")
	absent("opq/sub")
	if got := dirNames(t, filepath.Join(root, "opq")); !reflect.DeepEqual(got, []string{"new-after", "new-before"}) {
		t.Errorf("opq = %v, want [new-after new-before]", got)
	}
	absent("opq2/sub/lower")
	if got := read("opq2/sub/upper"); got != "same layer, no dir entry" {
		t.Errorf("opq2/sub/upper = %q", got)
	}
	a, b := lstat("data/orig"), lstat("data/link")
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hardlink: inodes %d/%d nlink %d", a.Ino, b.Ino, a.Nlink)
	}
	if a.Mode&0o7777 != 0o640 || a.Uid != 1000 || a.Gid != 1001 {
		t.Errorf("data/orig mode %o owner %d:%d", a.Mode&0o7777, a.Uid, a.Gid)
	}
	if st := lstat("data"); st.Mode&0o7777 != 0o750 || st.Uid != 1000 {
		t.Errorf("data dir mode %o uid %d", st.Mode&0o7777, st.Uid)
	}
	if got := read("data/replaced-dir"); got != "now a file" {
		t.Errorf("data/replaced-dir = %q", got)
	}
	if st := lstat("bin/suid"); st.Mode&0o7777 != 0o4755 || st.Gid != 50 {
		t.Errorf("bin/suid mode %o gid %d (setuid must survive chown)", st.Mode&0o7777, st.Gid)
	}
	for p, want := range map[string]string{"bin/rel": "../etc/keep", "bin/abs": "/etc/keep", "lib": "usr/lib"} {
		if got, err := os.Readlink(filepath.Join(root, p)); err != nil || got != want {
			t.Errorf("readlink %s = %q, %v; want %q", p, got, err, want)
		}
	}
	if st := lstat("tmp"); st.Mode&0o7777 != 0o1777 {
		t.Errorf("tmp mode %o", st.Mode&0o7777)
	}
	if got := read("usr/lib/through-symlink"); got != "in usr/lib" {
		t.Errorf("usr/lib/through-symlink = %q", got)
	}
	if _, err := os.Stat("/usr/lib/via-absolute"); err == nil {
		t.Errorf("an absolute symlink was followed on the host")
	}
	if got := read("usr/lib/via-absolute"); !strings.HasPrefix(got, "inside") {
		t.Errorf("usr/lib/via-absolute = %q", got)
	}
	if st := lstat("dev/fifo"); st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("dev/fifo mode %o", st.Mode)
	}
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(filepath.Join(root, "xattr"), "user.zygote", buf)
	if err != nil || string(buf[:n]) != "yes" {
		t.Errorf("xattr user.zygote = %q, %v", buf[:n], err)
	}
	n, err = unix.Lgetxattr(filepath.Join(root, "xattr"), "security.capability", buf)
	if err != nil || n != 20 {
		t.Errorf("xattr security.capability: %d bytes, %v", n, err)
	}
}

func TestFlattenLayers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("flattening keeps owners and sets security xattrs: needs root")
	}
	root := t.TempDir()
	fl := newFlattener(root)
	layers, err := layeredImage(t).Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		if err := applyVerified(l, fl, nil); err != nil {
			t.Fatal(err)
		}
	}
	checkTree(t, root)
}

// TestFlattenRefusesEscapes: entries that would leave the root are refused
// and nothing is written outside it.
func TestFlattenRefusesEscapes(t *testing.T) {
	type E = imagestest.Entry
	cases := []struct {
		name    string
		entries []E
	}{
		{"dotdot", []E{{Name: "../../etc/x", Body: []byte("x")}}},
		{"dotdot in middle", []E{{Name: "a/../../x", Body: []byte("x")}}},
		{"absolute", []E{{Name: "/etc/x", Body: []byte("x")}}},
		{"hardlink out", []E{{Name: "x", Type: tar.TypeLink, Linkname: "../outside"}}},
		{"hardlink absolute", []E{{Name: "x", Type: tar.TypeLink, Linkname: "/outside"}}},
		{"hardlink via symlinked parent", []E{
			{Name: "a", Type: tar.TypeSymlink, Linkname: "/../"},
			{Name: "x", Type: tar.TypeLink, Linkname: "a/outside"},
		}},
		{"symlink relative out", []E{{Name: "a/", Type: tar.TypeDir}, {Name: "a/x", Type: tar.TypeSymlink, Linkname: "../../outside"}}},
		{"symlinked parent out", []E{
			{Name: "a/", Type: tar.TypeDir},
			{Name: "a/up", Type: tar.TypeSymlink, Linkname: "/.."},
			{Name: "a/up/x", Body: []byte("x")},
		}},
		{"whiteout via symlink out", []E{
			{Name: "a/", Type: tar.TypeDir},
			{Name: "a/up", Type: tar.TypeSymlink, Linkname: "/.."},
			{Name: "a/up/.wh.outside"},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			if err := os.WriteFile(outside, []byte("precious"), 0o644); err != nil {
				t.Fatal(err)
			}
			root := filepath.Join(base, "r", "root")
			if err := os.MkdirAll(root, 0o755); err != nil {
				t.Fatal(err)
			}
			l := imagestest.Layer(t, tc.entries)
			err := applyVerified(l, newFlattener(root), nil)
			if !errors.Is(err, errEscape) || !errdefs.IsInvalidArgument(err) {
				t.Fatalf("err = %v, want an escape refusal (ErrInvalidArgument)", err)
			}
			if b, err := os.ReadFile(outside); err != nil || string(b) != "precious" {
				t.Errorf("file outside the root changed: %q, %v", b, err)
			}
			var names []string
			filepath.Walk(base, func(p string, info os.FileInfo, err error) error {
				if err == nil && !strings.HasPrefix(p, root) && p != base {
					names = append(names, strings.TrimPrefix(p, base))
				}
				return nil
			})
			sort.Strings(names)
			if want := []string{"/outside", "/r"}; !reflect.DeepEqual(names, want) {
				t.Errorf("outside the root: %v, want %v", names, want)
			}
		})
	}
}
