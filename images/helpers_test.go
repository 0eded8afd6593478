package images

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/zygote/zygote/internal/testutil"
)

// newStore opens a store in a fresh directory (or root, when given) and
// closes it at cleanup.
func newStore(t testing.TB, cfg Config) *Store {
	t.Helper()
	if cfg.Root == "" {
		cfg.Root = filepath.Join(t.TempDir(), "images")
	}
	s, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// pullWait pulls ref and waits up to two minutes for the result.
func pullWait(t testing.TB, s *Store, ref string) (Image, error) {
	t.Helper()
	if _, err := s.Pull(ref, PullOptions{}); err != nil {
		return Image{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return s.Wait(ctx, ref)
}

// mountRO loop-mounts a root disk read-only and returns the mount point;
// unmounted at cleanup.
func mountRO(t testing.TB, disk, fstype string) string {
	t.Helper()
	testutil.RequirePrivileged(t, "reading a root disk back", "mount", "umount")
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", fstype, "-o", "loop,ro", disk, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount %s: %v: %s", disk, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// dirNames lists a directory's entries ("" when it does not exist).
func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// assertEmptyStore checks that nothing of a failed pull was left: no
// staging, no image directory, no tag.
func assertEmptyStore(t testing.TB, s *Store) {
	t.Helper()
	for _, d := range []string{"tmp", "blobs/sha256", "tags"} {
		if names := dirNames(t, filepath.Join(s.root, d)); len(names) != 0 {
			t.Errorf("%s not empty after a failed pull: %v", d, names)
		}
	}
}

func v1Config() v1.Config { return v1.Config{Entrypoint: []string{"/ok"}} }
