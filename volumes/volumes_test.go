package volumes

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/testutil"
)

func TestVolumeLifecycle(t *testing.T) {
	testutil.RequirePrivileged(t, "formatting volumes", "mkfs.ext4")
	ctx := context.Background()
	root := t.TempDir()
	var users []string
	s, err := Open(Config{Root: root, InUse: func(string) []string { return users }})
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.Create(ctx, CreateRequest{Name: "data", SizeBytes: 1 << 30, Tags: map[string]string{"a": "b"}})
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(s.DiskPath(v.ID), &st); err != nil || st.Size != 1<<30 || st.Blocks*512 > 64<<20 {
		t.Fatalf("disk: size %d allocated %d: %v (want 1 GiB, sparse)", st.Size, st.Blocks*512, err)
	}
	for _, ref := range []string{v.ID, "data"} {
		if got, err := s.Get(ref); err != nil || got.ID != v.ID || got.SizeBytes != 1<<30 || got.Tags["a"] != "b" {
			t.Errorf("Get(%s) = %+v, %v", ref, got, err)
		}
	}
	for name, req := range map[string]CreateRequest{
		"same name":  {Name: "data", SizeBytes: 64 << 20},
		"same id":    {Name: "other", ID: v.ID, SizeBytes: 64 << 20},
		"too small":  {Name: "small", SizeBytes: 1 << 20},
		"bad name":   {Name: "Bad Name", SizeBytes: 64 << 20},
		"zero sized": {Name: "zero"},
	} {
		if _, err := s.Create(ctx, req); !errdefs.IsAlreadyExists(err) && !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if all, _ := s.List(); len(all) != 1 {
		t.Errorf("List after refusals: %+v", all)
	}
	users = []string{"instance web"}
	if err := s.Delete("data"); !errdefs.IsConflict(err) {
		t.Fatalf("delete in use: %v", err)
	}
	users = nil
	if err := s.Delete("data"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("data"); !errdefs.IsNotFound(err) {
		t.Errorf("after delete: %v", err)
	}
	if entries, _ := os.ReadDir(root); len(entries) != 1 {
		t.Errorf("left %d entries in the root, want only tmp", len(entries))
	}
	// A crash mid-create leaves staging; Open sweeps it.
	os.MkdirAll(filepath.Join(root, "tmp", "create-1"), 0o700)
	if _, err := Open(Config{Root: root}); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "tmp")); len(entries) != 0 {
		t.Errorf("staging not swept: %d entries", len(entries))
	}
}
