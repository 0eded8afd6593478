package main

import (
	"log/slog"
	"path/filepath"

	"github.com/zygote/zygote/images"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/store"
)

// newImageStore opens the image store under <data-dir>/images. Its InUse
// callback names the instances and snapshots (and creates in flight)
// whose disks use a digest, read from the daemon's store: DELETE of an
// image in use is 409 naming them.
func newImageStore(cfg serveConfig, st *store.Store, log *slog.Logger) (*images.Store, error) {
	return images.Open(images.Config{
		Root:   filepath.Join(cfg.dataDir, "images"),
		InUse:  instances.ImageUsers(st),
		Logger: log,
	})
}
