package main

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/store"
	"github.com/zygote/zygote/volumes"
)

// newVolumeStore opens <data-dir>/volumes; its InUse callback names the
// instances that attach a volume, read from the daemon's store.
func newVolumeStore(cfg serveConfig, st *store.Store, log *slog.Logger) (instances.VolumeStore, error) {
	s, err := volumes.Open(volumes.Config{Root: filepath.Join(cfg.dataDir, "volumes"), InUse: instances.VolumeUsers(st), Logger: log})
	if err != nil {
		return nil, err
	}
	return volumeStore{s}, nil
}

// volumeStore adapts the volumes package to the manager's VolumeStore.
type volumeStore struct{ s *volumes.Store }

func volumeOf(v volumes.Volume) instances.Volume {
	return instances.Volume{ID: v.ID, Name: v.Name, SizeBytes: v.SizeBytes, Tags: v.Tags, CreatedAt: v.CreatedAt.Format(time.RFC3339Nano)}
}

func (a volumeStore) Create(ctx context.Context, name string, size int64, id string, tags map[string]string) (instances.Volume, error) {
	v, err := a.s.Create(ctx, volumes.CreateRequest{Name: name, SizeBytes: size, ID: id, Tags: tags})
	return volumeOf(v), err
}

func (a volumeStore) Get(ref string) (instances.Volume, error) {
	v, err := a.s.Get(ref)
	return volumeOf(v), err
}

func (a volumeStore) List() ([]instances.Volume, error) {
	vs, err := a.s.List()
	out := make([]instances.Volume, 0, len(vs))
	for _, v := range vs {
		out = append(out, volumeOf(v))
	}
	return out, err
}

func (a volumeStore) Delete(ref string) error   { return a.s.Delete(ref) }
func (a volumeStore) DiskPath(id string) string { return a.s.DiskPath(id) }
