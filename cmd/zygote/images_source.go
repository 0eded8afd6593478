package main

import (
	"context"

	"github.com/zygote/zygote/images"
	"github.com/zygote/zygote/instances"
)

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
