package api

import (
	"context"
	"time"

	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/instances"
)

// Manager is everything the API asks of the instance manager: one method
// per route, nothing else (no Reconcile, no Close — the daemon owns the
// manager's life). *instances.Manager implements it; the API never sees
// the concrete type, so a handler cannot reach past this list.
type Manager interface {
	// Instances.
	Create(ctx context.Context, req instances.CreateRequest) (instances.Instance, error)
	List(ctx context.Context, f instances.ListFilter) ([]instances.Instance, error)
	Get(ctx context.Context, ref string) (instances.Instance, error)
	Start(ctx context.Context, ref string) (instances.Instance, error)
	Stop(ctx context.Context, ref string) (instances.Instance, error)
	Standby(ctx context.Context, ref string) (instances.Instance, error)
	Restore(ctx context.Context, ref string) (instances.Instance, error)
	Delete(ctx context.Context, ref string, force bool) error
	Wait(ctx context.Context, ref string, target instances.State, timeout time.Duration) (instances.WaitResult, error)
	Fork(ctx context.Context, ref string, req instances.ForkRequest) ([]instances.Instance, error)

	// Resources.
	Stats(ctx context.Context, ref string) (instances.InstanceStats, error)
	Resources(ctx context.Context) (instances.Resources, error)

	// Guest access.
	ExecTarget(ctx context.Context, ref string) (instances.Instance, error)
	Exec(ctx context.Context, ref string, req agent.ExecRequest, waitForAgent time.Duration) (int, error)
	LogPath(ctx context.Context, ref, source string) (instances.Instance, string, error)
	GuestFileManager

	// Snapshots.
	CreateSnapshot(ctx context.Context, ref string, req instances.SnapshotRequest) (instances.Snapshot, error)
	ListSnapshots(ctx context.Context, f instances.SnapshotFilter) ([]instances.Snapshot, error)
	GetSnapshot(ctx context.Context, ref string) (instances.Snapshot, error)
	DeleteSnapshot(ctx context.Context, ref string) error
	RestoreSnapshot(ctx context.Context, ref, snapRef string, target instances.State) (instances.Instance, error)
	ForkSnapshot(ctx context.Context, snapRef string, req instances.ForkRequest) ([]instances.Instance, error)
	CheckTargetHypervisor(ctx context.Context, snapRef, target string) error

	// Volumes.
	CreateVolume(ctx context.Context, name string, sizeBytes int64, id string, tags map[string]string) (instances.Volume, error)
	ListVolumes(ctx context.Context) ([]instances.Volume, error)
	GetVolume(ctx context.Context, ref string) (instances.Volume, error)
	DeleteVolume(ctx context.Context, ref string) error
}

var _ Manager = (*instances.Manager)(nil)
