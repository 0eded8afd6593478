package qemu

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor"
)

func TestSharedMemoryArgs(t *testing.T) {
	st := driverState{Version: 1, Machine: "q35", Accel: "tcg"}
	spec := hypervisor.Spec{ID: "abc", Dir: "/d/abc", VCPUs: 1, MemoryBytes: 256 << 20, SharedMemory: true}
	for _, c := range []struct {
		shared, incoming bool
		want             string
	}{
		{false, false, "share=on"},
		{false, true, "share=on"},
		{true, false, "share=on"}, // a boot starts a fresh file of its own
		{true, true, "share=off"},
	} {
		spec.SharedMemory = c.shared
		joined := strings.Join(buildArgs(spec, st, c.incoming), " ")
		if !strings.Contains(joined, "mem-path=/d/abc/memory,"+c.want) {
			t.Errorf("shared=%v incoming=%v: want %s in %s", c.shared, c.incoming, c.want, joined)
		}
	}
}

func testDriver(t *testing.T) *Driver {
	return &Driver{cfg: Config{CopyMemory: func(ctx context.Context, src, dst string) error {
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(dst)
		if err != nil {
			return err
		}
		defer out.Close()
		_, err = io.Copy(out, in)
		return err
	}}}
}

// TestLinkOwnMemory: a link shares the inode; owning it gives an identical
// copy on a new inode and leaves the other link untouched; a share=on
// launch on a linked file is refused.
func TestLinkOwnMemory(t *testing.T) {
	d := testDriver(t)
	src, dst := t.TempDir(), t.TempDir()
	content := bytes.Repeat([]byte("base"), 4096)
	if err := os.WriteFile(filepath.Join(src, memoryFile), content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, memoryFile), []byte("old copy"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkOwnMemory(src); err != nil {
		t.Fatalf("one link: %v", err)
	}
	if err := d.LinkMemory(src, dst); err != nil {
		t.Fatal(err)
	}
	g1, n1, _ := d.MemoryLinks(src)
	g2, n2, _ := d.MemoryLinks(dst)
	if g1 != g2 || n1 != 2 || n2 != 2 {
		t.Fatalf("after link: %s/%d and %s/%d", g1, n1, g2, n2)
	}
	for _, dir := range []string{src, dst} {
		if err := checkOwnMemory(dir); !errdefs.IsInvalidState(err) {
			t.Fatalf("share=on on a linked file: %v, want InvalidState", err)
		}
	}
	if copied, err := d.OwnMemory(context.Background(), src); err != nil || !copied {
		t.Fatalf("OwnMemory = %v, %v", copied, err)
	}
	g1b, n1, _ := d.MemoryLinks(src)
	g2b, n2, _ := d.MemoryLinks(dst)
	if g1b == g2b || n1 != 1 || n2 != 1 || g2b != g2 {
		t.Fatalf("after own: %s/%d and %s/%d (shared group was %s)", g1b, n1, g2b, n2, g2)
	}
	for _, dir := range []string{src, dst} {
		if got, _ := os.ReadFile(filepath.Join(dir, memoryFile)); !bytes.Equal(got, content) {
			t.Fatalf("%s: content changed", dir)
		}
	}
	if copied, err := d.OwnMemory(context.Background(), src); err != nil || copied {
		t.Fatalf("OwnMemory of an owned file = %v, %v; want no copy", copied, err)
	}
	if err := d.LinkMemory(t.TempDir(), dst); !errdefs.IsInvalidState(err) {
		t.Fatalf("LinkMemory without a source memory file: %v", err)
	}
	if _, n, err := d.MemoryLinks(t.TempDir()); n != 0 || err != nil {
		t.Fatalf("MemoryLinks of an empty dir: %d %v", n, err)
	}
}
