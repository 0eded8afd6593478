package main

import (
	"context"
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

// imageSource adapts the image store to the manager's ImageSource.
type imageSource struct{ s *images.Store }

func (a imageSource) Ensure(ctx context.Context, ref string) (instances.ImageConfig, error) {
	img, err := a.s.Ensure(ctx, ref, images.PullOptions{})
	if err != nil {
		return instances.ImageConfig{}, err
	}
	return instances.ImageConfig{
		Name: img.Name, Digest: img.Digest, Format: img.Format,
		Entrypoint: img.Entrypoint, Cmd: img.Cmd, Env: img.Env, WorkingDir: img.WorkingDir, User: img.User,
	}, nil
}

func (a imageSource) RootDisk(digest string) (string, error) { return a.s.RootDisk(digest) }
