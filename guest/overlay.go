package guest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/zygote/zygote/errdefs"
)

// MinOverlaySize is the smallest overlay disk FormatOverlay makes.
const MinOverlaySize = 16 << 20

// FormatOverlay creates path as a sparse file of size bytes holding an
// empty ext4 filesystem: an instance's writable overlay disk, made by the
// host at create (zygote-init mounts it read-write and keeps the overlay's
// upper and work directories on it). Inode tables and the journal are
// initialised lazily by the guest kernel (lazy_itable_init,
// lazy_journal_init), so the file stays sparse and the call is fast
// whatever size: it costs what mkfs.ext4 writes (metadata, about 1% of the
// size for the journal plus group descriptors and bitmaps). No reserved
// blocks; no discard pass (the file is already a hole).
//
// path must not exist; the file appears atomically (a complete temporary
// file, then a rename), so a crash never leaves a half-formatted disk
// under path. Needs mkfs.ext4 (Debian package e2fsprogs).
func FormatOverlay(ctx context.Context, path string, size int64) error {
	if size < MinOverlaySize || size%4096 != 0 {
		return fmt.Errorf("format overlay %s: size %d: want a multiple of 4096, at least %d: %w", path, size, MinOverlaySize, errdefs.ErrInvalidArgument)
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("format overlay %s: already exists: %w", path, errdefs.ErrAlreadyExists)
	}
	mkfs, err := requireTool("mkfs.ext4", "e2fsprogs")
	if err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".zygote-tmp-mkfs")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("format overlay %s: %w", path, err)
	}
	defer os.Remove(tmp) // no-op after the rename
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("format overlay %s: %w", path, err)
	}
	if _, err := runTool(ctx, "", mkfs, "-F", "-q", "-m", "0", "-L", "zygote-overlay",
		"-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", tmp); err != nil {
		return fmt.Errorf("format overlay %s: %w", path, err)
	}
	f, err = os.Open(tmp)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return fmt.Errorf("format overlay %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("format overlay %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
