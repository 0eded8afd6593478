package clone

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestDirExcept: the named top-level entries are left out, a nested entry
// of the same name is not, and the default skips still apply.
func TestDirExcept(t *testing.T) {
	src := t.TempDir()
	for _, p := range []string{"memory", "state", "sub/memory", "vmm.log"} {
		os.MkdirAll(filepath.Dir(filepath.Join(src, p)), 0o755)
		if err := os.WriteFile(filepath.Join(src, p), []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dst := filepath.Join(t.TempDir(), "copy")
	st, err := New(Options{NoSync: true}).DirExcept(context.Background(), src, dst, "memory")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := entries(t, dst), []string{"state", "sub", "sub/memory"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("copy holds %v, want %v", got, want)
	}
	if st.Skipped != 2 {
		t.Fatalf("skipped %d entries, want 2 (memory, vmm.log)", st.Skipped)
	}
}
