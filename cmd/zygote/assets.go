package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"syscall"

	"github.com/zygote/zygote/clone"
)

// assetSharer gives an instance directory its own link to a cached guest
// kernel or initramfs (the QEMU driver's ShareFile).
//
// The cached assets are immutable: the initramfs is named by the hash of
// its content, a kernel by its Debian release, both are written under a
// temporary name and renamed into place, never rewritten, and Share makes
// them read-only before it links them. DESIGN invariant 1 therefore allows
// every instance a hard link to the one inode. A cache on another
// filesystem gets a reflink where the pair allows one and, last, a sparse
// copy; each way is logged once per daemon, not once per create.
type assetSharer struct {
	log *slog.Logger
	// quiet receives clone's own per-call fallback warnings.
	quiet *slog.Logger
	// once holds one sync.Once per way of sharing, so each is logged once.
	once map[string]*sync.Once
}

func newAssetSharer(log *slog.Logger) *assetSharer {
	return &assetSharer{
		log:   log,
		quiet: slog.New(slog.DiscardHandler),
		once:  map[string]*sync.Once{"link": new(sync.Once), "reflink": new(sync.Once), "copy": new(sync.Once)},
	}
}

// Share makes dst (which must not exist) a read-only file with src's
// content: a hard link to src, else a reflink, else a copy.
func (s *assetSharer) Share(ctx context.Context, src, dst string) error {
	if err := sealReadOnly(src); err != nil {
		return err
	}
	linkErr := os.Link(src, dst)
	if linkErr == nil {
		s.logOnce("link", slog.LevelInfo, "guest assets are shared with instances by hard link", src)
		return nil
	}
	if !linkUnsupported(linkErr) {
		return fmt.Errorf("share guest asset %s: %w", src, linkErr)
	}
	_, err := clone.File(ctx, src, dst, clone.Options{Strict: true, Logger: s.quiet})
	way := "reflink"
	if rr := (*clone.ReflinkRequiredError)(nil); errors.As(err, &rr) {
		way = "copy"
		_, err = clone.File(ctx, src, dst, clone.Options{Logger: s.quiet})
	}
	if err != nil {
		return fmt.Errorf("share guest asset %s: %w", src, err)
	}
	if way == "reflink" {
		s.logOnce(way, slog.LevelInfo, "guest assets are shared with instances by reflink (the cache is on another mount)", src, "link_error", linkErr)
	} else {
		s.logOnce(way, slog.LevelWarn, "guest assets are copied into every instance: the cache is on another filesystem, without reflink; put --cache-dir on the data directory's filesystem", src, "link_error", linkErr)
	}
	return sealReadOnly(dst)
}

func (s *assetSharer) logOnce(way string, level slog.Level, msg, src string, args ...any) {
	s.once[way].Do(func() {
		s.log.Log(context.Background(), level, msg, append([]any{"way", way, "asset", src}, args...)...)
	})
}

// linkUnsupported reports whether os.Link failed because a hard link is
// impossible here (another filesystem, too many links, a filesystem or a
// policy that refuses), not because of the files themselves.
func linkUnsupported(err error) bool {
	for _, errno := range []syscall.Errno{syscall.EXDEV, syscall.EMLINK, syscall.EPERM, syscall.EOPNOTSUPP} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}

// sealReadOnly clears path's write bits. A cache we may not change (EPERM,
// EROFS) is immutable to us already.
func sealReadOnly(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("guest asset: %w", err)
	}
	perm := fi.Mode().Perm()
	if perm&0o222 == 0 {
		return nil
	}
	err = os.Chmod(path, perm&^0o222)
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("make guest asset %s read-only: %w", path, err)
	}
	return nil
}
