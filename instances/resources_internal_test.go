package instances

import (
	"os"
	"path/filepath"
	"testing"
)

// TestDiskUseApportionsLinks: a file an instance shares by hard link (an
// image's root disk, a sharing group's memory file) counts once across
// its links, not once per instance.
func TestDiskUseApportionsLinks(t *testing.T) {
	root := t.TempDir()
	a, b := filepath.Join(root, "a"), filepath.Join(root, "b")
	for _, d := range []string{a, b} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = 1
	}
	if err := os.WriteFile(filepath.Join(a, "own"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a, "shared"), data, 0o400); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(a, "shared"), filepath.Join(b, "shared")); err != nil {
		t.Fatal(err)
	}
	ua, ub := diskUse(a), diskUse(b)
	if ua < 3<<19 || ua > 3<<19+64<<10 {
		t.Errorf("a (1 MiB own, 1 MiB shared by two): %d bytes, want about 1.5 MiB", ua)
	}
	if ub < 1<<19 || ub > 1<<19+32<<10 {
		t.Errorf("b (1 MiB shared by two): %d bytes, want about 0.5 MiB", ub)
	}
}
