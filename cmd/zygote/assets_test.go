package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/internal/testutil"
)

// writeAsset writes a cache-like asset (mode 0644, as the cache writes
// them) and returns its path.
func writeAsset(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(path, bytes.Repeat([]byte("kernel"), 10000), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// shareInto shares src into n fresh instance directories under root and
// returns the instances' files.
func shareInto(t *testing.T, s *assetSharer, src, root string, n int) []string {
	t.Helper()
	var out []string
	for i := range n {
		dir := filepath.Join(root, "instances", string(rune('a'+i)))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, "kernel")
		if err := s.Share(context.Background(), src, dst); err != nil {
			t.Fatal(err)
		}
		out = append(out, dst)
	}
	return out
}

func checkSameContent(t *testing.T, src string, files []string) {
	t.Helper()
	want, _ := os.ReadFile(src)
	for _, f := range files {
		got, err := os.ReadFile(f)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes (err %v), want %d bytes of the asset", f, len(got), err, len(want))
		}
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm()&0o222 != 0 {
			t.Errorf("%s is writable (%v, err %v): guest assets are immutable", f, fi.Mode(), err)
		}
	}
}

func TestShareAssetsSameFilesystem(t *testing.T) {
	var logs bytes.Buffer
	s := newAssetSharer(slog.New(slog.NewTextHandler(&logs, nil)))
	root := t.TempDir()
	src := writeAsset(t, filepath.Join(root))
	files := shareInto(t, s, src, root, 2)
	checkSameContent(t, src, files)
	a, _ := os.Stat(files[0])
	b, _ := os.Stat(files[1])
	if !os.SameFile(a, b) {
		t.Fatal("two instances' kernel files are different inodes; want one hard-linked immutable inode")
	}
	if fi, _ := os.Stat(src); fi.Mode().Perm() != 0o444 {
		t.Errorf("cached asset mode %v, want read-only 0444", fi.Mode())
	}
	if n := strings.Count(logs.String(), "hard link"); n != 1 {
		t.Errorf("logged the hard link %d times, want once:\n%s", n, logs.String())
	}
}

// TestShareAssetsAcrossMounts: a cache on another mount of the same XFS
// cannot be hard-linked (EXDEV) but can be reflinked.
func TestShareAssetsAcrossMounts(t *testing.T) {
	xfs := testutil.SharedXFS(t)
	cache, data := filepath.Join(xfs, "cache"), filepath.Join(t.TempDir(), "data")
	for _, d := range []string{cache, data} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dataOnXFS := filepath.Join(xfs, "data")
	if err := os.MkdirAll(dataOnXFS, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dataOnXFS, data, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(data, unix.MNT_DETACH) })

	var logs bytes.Buffer
	s := newAssetSharer(slog.New(slog.NewTextHandler(&logs, nil)))
	src := writeAsset(t, cache)
	files := shareInto(t, s, src, data, 2)
	checkSameContent(t, src, files)
	if n := strings.Count(logs.String(), "by reflink"); n != 1 {
		t.Errorf("want one log line about reflink, got:\n%s", logs.String())
	}
}

// TestShareAssetsCopyLogsOnce: a cache on ext4 and instances on XFS
// cannot share blocks at all; each instance gets a copy and the daemon
// says so once, not once per create.
func TestShareAssetsCopyLogsOnce(t *testing.T) {
	cache := testutil.Ext4Dir(t)
	data := testutil.SharedXFS(t)
	var logs bytes.Buffer
	s := newAssetSharer(slog.New(slog.NewTextHandler(&logs, nil)))
	src := writeAsset(t, cache)
	files := shareInto(t, s, src, data, 3)
	checkSameContent(t, src, files)
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Errorf("want exactly one warning for 3 copies, got:\n%s", logs.String())
	}
}
