package instances

import (
	"context"
	"fmt"
	"strings"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/snapshots"
	"github.com/zygote/zygote/store"
)

// Named snapshots: the types, listing and lookup, and the manifest check
// every user of a snapshot's files runs first. One operation per file:
// snapshot_create.go, snapshot_restore.go, snapshot_delete.go; a fork of a
// snapshot is in fork.go.

// Snapshot is a snapshot record; SnapshotKind says what it holds. The
// aliases let the API use them without importing the store.
type (
	Snapshot     = store.Snapshot
	SnapshotKind = store.SnapshotKind
)

// Snapshot kinds.
const (
	SnapshotStandby = store.SnapshotStandby
	SnapshotStopped = store.SnapshotStopped
)

// SnapshotRequest describes a new snapshot.
type SnapshotRequest struct {
	Kind store.SnapshotKind
	Name string
	Tags map[string]string
}

// SnapshotFilter narrows ListSnapshots; zero fields match everything.
type SnapshotFilter struct {
	SourceInstanceID string
	Kind             store.SnapshotKind
	Name             string
	Tags             map[string]string
}

// ParseSnapshotKind checks a kind from a request.
func ParseSnapshotKind(s string) (store.SnapshotKind, error) {
	switch k := store.SnapshotKind(s); k {
	case store.SnapshotStandby, store.SnapshotStopped:
		return k, nil
	}
	return "", fmt.Errorf("snapshot kind %q: want Standby or Stopped: %w", s, errdefs.ErrInvalidArgument)
}

// ListSnapshots returns the snapshots matching f, oldest first.
func (m *Manager) ListSnapshots(ctx context.Context, f SnapshotFilter) ([]store.Snapshot, error) {
	var all []store.Snapshot
	if err := m.store.View(func(tx *store.Tx) (err error) { all, err = tx.Snapshots(); return }); err != nil {
		return nil, err
	}
	out := []store.Snapshot{}
	for _, s := range all {
		if (f.SourceInstanceID == "" || s.SourceInstanceID == f.SourceInstanceID) &&
			(f.Kind == "" || s.Kind == f.Kind) && (f.Name == "" || s.Name == f.Name) && tagsMatch(s.Tags, f.Tags) {
			out = append(out, s)
		}
	}
	return out, nil
}

// GetSnapshot finds a snapshot by exact id or unique id prefix.
func (m *Manager) GetSnapshot(ctx context.Context, ref string) (store.Snapshot, error) {
	var found []store.Snapshot
	err := m.store.View(func(tx *store.Tx) error {
		if s, err := tx.Snapshot(ref); err == nil {
			found = []store.Snapshot{s}
			return nil
		}
		all, err := tx.Snapshots()
		for _, s := range all {
			if ref != "" && strings.HasPrefix(s.ID, ref) {
				found = append(found, s)
			}
		}
		return err
	})
	switch {
	case err != nil:
		return store.Snapshot{}, err
	case len(found) == 0:
		return store.Snapshot{}, fmt.Errorf("snapshot %q: %w", ref, errdefs.ErrNotFound)
	case len(found) > 1:
		return store.Snapshot{}, fmt.Errorf("snapshot %q: several snapshots match, use the full id: %w", ref, errdefs.ErrAmbiguous)
	}
	return found[0], nil
}

// verifiedSnapshot checks a snapshot's manifest before its files are
// trusted by a restore or a fork.
func (m *Manager) verifiedSnapshot(snap store.Snapshot) error {
	man, err := snapshots.Read(m.snapshotDir(snap.ID))
	if err != nil {
		return err
	}
	if man.ID != snap.ID {
		return fmt.Errorf("snapshot %s: its manifest names snapshot %s: %w", snap.ID, man.ID, errdefs.ErrInvalidState)
	}
	return nil
}

// manifestOf is the on-disk description of a snapshot record; the
// manifest format is the snapshots package's own.
func manifestOf(s store.Snapshot) snapshots.Manifest {
	return snapshots.Manifest{
		ID: s.ID, Name: s.Name, Kind: snapshots.Kind(s.Kind), SourceInstanceID: s.SourceInstanceID,
		SourceInstanceName: s.SourceInstanceName, CacheKey: s.CacheKey,
		Hostname: s.Hostname, BootID: s.BootID, CreatedAt: s.CreatedAt,
		Spec: snapshots.Spec{
			Hypervisor: s.Spec.Hypervisor, VCPUs: s.Spec.VCPUs, MemoryBytes: s.Spec.MemoryBytes,
			KernelArgs: s.Spec.KernelArgs, Command: s.Spec.Command, Env: s.Spec.Env, Image: s.Spec.Image,
			DriverState: s.Spec.DriverState,
		},
	}
}
