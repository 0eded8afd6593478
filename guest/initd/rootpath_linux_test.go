package initd

import (
	"os"
	"path/filepath"
	"testing"
)

// TestHostPathInRoot: file operations resolve guest paths inside the
// workload root as the workload sees them: absolute symlinks restart at
// the root, ".." and escaping links stop there, missing parents are made
// inside it, and without a root paths are the initramfs's own.
func TestHostPathInRoot(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"usr/bin", "etc", "data"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"bin": "/usr/bin", "esc": "../../../../../etc", "abs": "/data", "sh": "/usr/bin/busybox"} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		p      string
		follow bool
		want   string
	}{
		{"/", false, root},
		{"/bin/x", false, root + "/usr/bin/x"},
		{"/esc/passwd", false, root + "/etc/passwd"},
		{"/../../etc/passwd", false, root + "/etc/passwd"},
		{"/abs", false, root + "/abs"},
		{"/abs", true, root + "/data"},
		{"/sh", true, root + "/sh"}, // a dangling link is not followed
		{"/bin", true, root + "/usr/bin"},
	} {
		got, err := hostPathInRoot(root, tc.p, tc.follow)
		if err != nil || got != tc.want {
			t.Errorf("hostPathInRoot(%s, follow=%v) = %q, %v; want %q", tc.p, tc.follow, got, err, tc.want)
		}
	}
	if got, err := hostPathInRoot("", "/etc/passwd", true); got != "/etc/passwd" || err != nil {
		t.Errorf("without a root: %q %v", got, err)
	}
	if _, err := hostPathInRoot(root, "/missing/x", false); err == nil {
		t.Error("a missing parent resolved")
	}
	if err := mkdirAllInRoot(root, "/abs/a/b"); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(root, "data/a/b")); err != nil || !fi.IsDir() {
		t.Errorf("mkdirAllInRoot through an absolute link: %v", err)
	}
	if err := mkdirAllInRoot(root, "/esc/new"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/new")); err != nil {
		t.Errorf("mkdirAllInRoot through an escaping link did not stay in the root: %v", err)
	}
}
