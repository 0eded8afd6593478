package instancestest

import (
	"context"
	"time"

	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/volumes"
)

// VolumeStore is the real volume store (package volumes) behind the
// manager's VolumeStore interface, as cmd/zygote adapts it.
type VolumeStore struct{ S *volumes.Store }

func volumeOf(v volumes.Volume) instances.Volume {
	return instances.Volume{ID: v.ID, Name: v.Name, SizeBytes: v.SizeBytes, Tags: v.Tags, CreatedAt: v.CreatedAt.Format(time.RFC3339Nano)}
}

func (a VolumeStore) Create(ctx context.Context, name string, size int64, id string, tags map[string]string) (instances.Volume, error) {
	v, err := a.S.Create(ctx, volumes.CreateRequest{Name: name, SizeBytes: size, ID: id, Tags: tags})
	return volumeOf(v), err
}

func (a VolumeStore) Get(ref string) (instances.Volume, error) {
	v, err := a.S.Get(ref)
	return volumeOf(v), err
}

func (a VolumeStore) List() ([]instances.Volume, error) {
	vs, err := a.S.List()
	out := make([]instances.Volume, 0, len(vs))
	for _, v := range vs {
		out = append(out, volumeOf(v))
	}
	return out, err
}

func (a VolumeStore) Delete(ref string) error   { return a.S.Delete(ref) }
func (a VolumeStore) DiskPath(id string) string { return a.S.DiskPath(id) }
