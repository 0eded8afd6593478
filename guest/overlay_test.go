package guest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/zygote/zygote/errdefs"
)

func allocated(t testing.TB, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestFormatOverlay(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 not installed (Debian package e2fsprogs)")
	}
	ctx := context.Background()
	dir := t.TempDir()
	p := filepath.Join(dir, "overlay.img")
	const size = 1 << 30
	if err := FormatOverlay(ctx, p, size); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Size() != size {
		t.Fatalf("stat: %v %v", fi, err)
	}
	if a := allocated(t, p); a > size/20 {
		t.Errorf("overlay allocates %d bytes of %d: not sparse", a, size)
	}
	// A clean, mountable ext4 (e2fsck -n changes nothing and finds nothing).
	if out, err := exec.Command("e2fsck", "-f", "-n", p).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck: %v\n%s", err, out)
	}
	if err := FormatOverlay(ctx, p, size); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second format over an existing disk: %v", err)
	}
	for _, bad := range []int64{0, 1 << 20, MinOverlaySize + 1} {
		if err := FormatOverlay(ctx, filepath.Join(dir, "bad.img"), bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("size %d: %v", bad, err)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("leftovers in the directory: %v", ents)
	}
}

// BenchmarkFormatOverlay reports what an overlay disk costs at create:
// time and the blocks mkfs.ext4 really writes, per size.
func BenchmarkFormatOverlay(b *testing.B) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		b.Skip("mkfs.ext4 not installed")
	}
	for _, size := range []int64{1 << 30, 10 << 30} {
		b.Run(fmt.Sprintf("%dGiB", size>>30), func(b *testing.B) {
			dir := b.TempDir()
			var alloc int64
			for i := 0; b.Loop(); i++ {
				p := filepath.Join(dir, fmt.Sprintf("o%d.img", i))
				if err := FormatOverlay(context.Background(), p, size); err != nil {
					b.Fatal(err)
				}
				alloc = allocated(b, p)
				os.Remove(p)
			}
			b.ReportMetric(float64(alloc)/(1<<20), "allocated-MiB")
		})
	}
}
