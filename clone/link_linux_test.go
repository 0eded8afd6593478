package clone

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestLinkReadOnly: with LinkReadOnly, files without a write bit are hard
// links in the copy (same inode: an image's root disk, a kernel), writable
// files are copies (different inode), and without the option everything
// is copied.
func TestLinkReadOnly(t *testing.T) {
	src := t.TempDir()
	for name, mode := range map[string]os.FileMode{"rootfs.ext4": 0o444, "vmlinux": 0o555, "overlay.ext4": 0o644, "memory": 0o600} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(name), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(src, name), mode); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		link   bool
		shared map[string]bool
	}{
		{true, map[string]bool{"rootfs.ext4": true, "vmlinux": true, "overlay.ext4": false, "memory": false}},
		{false, map[string]bool{"rootfs.ext4": false, "vmlinux": false, "overlay.ext4": false, "memory": false}},
	} {
		dst := filepath.Join(t.TempDir(), "copy")
		st, err := Dir(context.Background(), src, dst, Options{LinkReadOnly: tc.link, NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		wantLinked := 0
		for name, shared := range tc.shared {
			if shared {
				wantLinked++
			}
			if got := sameInode(t, filepath.Join(src, name), filepath.Join(dst, name)); got != shared {
				t.Errorf("LinkReadOnly=%v: %s shares the inode: %v, want %v", tc.link, name, got, shared)
			}
			b, err := os.ReadFile(filepath.Join(dst, name))
			if err != nil || string(b) != name {
				t.Errorf("%s: %q, %v", name, b, err)
			}
		}
		if st.Linked != wantLinked || st.Files != 4-wantLinked {
			t.Errorf("LinkReadOnly=%v: stats linked %d files %d, want %d and %d", tc.link, st.Linked, st.Files, wantLinked, 4-wantLinked)
		}
	}
}

func sameInode(t *testing.T, a, b string) bool {
	t.Helper()
	ia, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	ib, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	return ia.Sys().(*syscall.Stat_t).Ino == ib.Sys().(*syscall.Stat_t).Ino && ia.Sys().(*syscall.Stat_t).Dev == ib.Sys().(*syscall.Stat_t).Dev
}
