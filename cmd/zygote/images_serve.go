package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/spf13/cobra"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/images"
)

// imageFlags are serve's image store settings.
type imageFlags struct {
	insecure []string // registries reachable over plain http
	format   string   // root-disk format: ext4 or erofs
}

func addImageFlags(cmd *cobra.Command, c *imageFlags) {
	f := cmd.Flags()
	f.StringArrayVar(&c.insecure, "insecure-registry", nil, "registry (host or host:port) that may be pulled from over plain http (repeatable); 127.0.0.0/8 and localhost always may")
	f.StringVar(&c.format, "image-format", images.FormatExt4, "root-disk format of converted images: ext4 (the guest kernel has it built in) or erofs (smaller; the guest loads erofs.ko)")
}

// imagesDir and uploadsDir are where images live and where archives sent
// to POST /images/import are staged, under the data directory.
func imagesDir(cfg serveConfig) string  { return filepath.Join(cfg.dataDir, "images") }
func uploadsDir(cfg serveConfig) string { return filepath.Join(cfg.dataDir, "uploads") }

// imageUsers is the seam through which the image store asks who uses an
// image's root disk (images.Config.InUse), so Delete refuses while any
// instance or snapshot does. The store is built before the manager (the
// manager creates instances from it), so the manager is attached
// afterwards: when it has a method
//
//	ImageUsers(digest string) []string // names of instances and snapshots using it
//
// that method answers; until then, or when the manager has none, nothing
// is reported as using an image. ImageUsers is called with the store's
// lock held: it must not call back into the image store.
type imageUsers struct {
	mu    sync.RWMutex
	users func(digest string) []string
}

// attach asks m from now on, if it can answer.
func (u *imageUsers) attach(m any) {
	src, ok := m.(interface{ ImageUsers(digest string) []string })
	if !ok {
		return
	}
	u.mu.Lock()
	u.users = src.ImageUsers
	u.mu.Unlock()
}

func (u *imageUsers) inUse(digest string) []string {
	u.mu.RLock()
	f := u.users
	u.mu.RUnlock()
	if f == nil {
		return nil
	}
	return f(digest)
}

// newImageStore opens the image store under <data>/images and clears
// uploads a previous daemon left half-received. The caller closes the
// store at shutdown and attaches the manager to the returned seam.
func newImageStore(cfg serveConfig, log *slog.Logger) (*images.Store, *imageUsers, error) {
	if f := cfg.images.format; f != images.FormatExt4 && f != images.FormatErofs {
		return nil, nil, fmt.Errorf("--image-format %q: want %s or %s: %w", f, images.FormatExt4, images.FormatErofs, errdefs.ErrInvalidArgument)
	}
	if err := os.RemoveAll(uploadsDir(cfg)); err != nil {
		return nil, nil, fmt.Errorf("clear image uploads: %w", err)
	}
	users := &imageUsers{}
	st, err := images.Open(images.Config{
		Root: imagesDir(cfg), Format: cfg.images.format, InsecureRegistries: cfg.images.insecure,
		InUse: users.inUse, Logger: log,
	})
	if err != nil {
		return nil, nil, err
	}
	log.Info("image store open", "root", imagesDir(cfg), "format", cfg.images.format, "insecure_registries", cfg.images.insecure)
	return st, users, nil
}
