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

// bindMountedXFS returns a cache directory on an XFS and a data directory
// on another mount of the same XFS: a hard link between them fails with
// EXDEV, a reflink works.
func bindMountedXFS(t *testing.T) (cache, data string) {
	xfs := testutil.SharedXFS(t)
	cache, data = filepath.Join(xfs, "cache"), filepath.Join(t.TempDir(), "data")
	dataOnXFS := filepath.Join(xfs, "data")
	for _, d := range []string{cache, data, dataOnXFS} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount(dataOnXFS, data, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(data, unix.MNT_DETACH) })
	return cache, data
}

// TestShareAssets: instances share the cached guest assets by hard link
// when the cache is on their filesystem, by reflink on another mount of
// it, and get copies only as a last resort; each way is logged once per
// daemon, not once per create.
func TestShareAssets(t *testing.T) {
	for _, tc := range []struct {
		name      string
		dirs      func(t *testing.T) (cache, data string)
		sameInode bool   // every instance's file is the cache's inode
		logOnce   string // appears exactly once in the log
	}{
		{"same filesystem", func(t *testing.T) (string, string) { d := t.TempDir(); return d, d }, true, "by hard link"},
		{"another mount of the filesystem", bindMountedXFS, false, "by reflink"},
		{"another filesystem", func(t *testing.T) (string, string) { return testutil.Ext4Dir(t), testutil.SharedXFS(t) }, false, "level=WARN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache, data := tc.dirs(t)
			var logs bytes.Buffer
			s := newAssetSharer(slog.New(slog.NewTextHandler(&logs, nil)))
			src := writeAsset(t, cache)
			files := shareInto(t, s, src, data, 3)
			checkSameContent(t, src, files)
			if fi, _ := os.Stat(src); fi.Mode().Perm() != 0o444 {
				t.Errorf("cached asset mode %v, want read-only 0444", fi.Mode())
			}
			srcInfo, _ := os.Stat(src)
			for _, f := range files {
				fi, _ := os.Stat(f)
				if same := os.SameFile(srcInfo, fi); same != tc.sameInode {
					t.Errorf("%s shares the cache's inode: %v, want %v", f, same, tc.sameInode)
				}
			}
			if n := strings.Count(logs.String(), tc.logOnce); n != 1 {
				t.Errorf("%q logged %d times for 3 instances, want once:\n%s", tc.logOnce, n, logs.String())
			}
		})
	}
}
