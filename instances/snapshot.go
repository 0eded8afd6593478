package instances

import (
	"context"
	"fmt"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/snapshots"
	"github.com/zygote/zygote/store"
)

// Named snapshots: the types, listing and lookup, and the manifest check
// every user of a snapshot's files runs first. One operation per file:
// snapshot_create.go, snapshot_restore.go, snapshot_delete.go; a fork of a
// snapshot is in fork.go.

// SnapshotRequest describes a new snapshot.
type SnapshotRequest struct {
	Kind SnapshotKind
	Name string
	Tags map[string]string
}

// SnapshotFilter narrows ListSnapshots; zero fields match everything.
type SnapshotFilter struct {
	SourceInstanceID string
	Kind             SnapshotKind
	Name             string
	Tags             map[string]string
}

// ParseSnapshotKind checks a kind from a request.
func ParseSnapshotKind(s string) (SnapshotKind, error) {
	switch k := SnapshotKind(s); k {
	case SnapshotStandby, SnapshotStopped:
		return k, nil
	}
	return "", fmt.Errorf("snapshot kind %q: want Standby or Stopped: %w", s, errdefs.ErrInvalidArgument)
}

// ListSnapshots returns the snapshots matching f, oldest first.
func (m *Manager) ListSnapshots(ctx context.Context, f SnapshotFilter) ([]Snapshot, error) {
	var all []store.Snapshot
	if err := m.store.View(func(tx *store.Tx) (err error) { all, err = tx.Snapshots(); return }); err != nil {
		return nil, err
	}
	out := []Snapshot{}
	for _, s := range all {
		if (f.SourceInstanceID == "" || s.SourceInstanceID == f.SourceInstanceID) &&
			(f.Kind == "" || SnapshotKind(s.Kind) == f.Kind) && (f.Name == "" || s.Name == f.Name) && tagsMatch(s.Tags, f.Tags) {
			out = append(out, snapshotOf(s))
		}
	}
	return out, nil
}

// GetSnapshot resolves ref (id, name or unique id prefix, as for
// instances; store.Tx.ResolveSnapshot).
func (m *Manager) GetSnapshot(ctx context.Context, ref string) (Snapshot, error) {
	s, err := m.findSnapshot(ref)
	if err != nil {
		return Snapshot{}, err
	}
	return snapshotOf(s), nil
}

// findSnapshot resolves ref (id, name or unique id prefix) to a record.
func (m *Manager) findSnapshot(ref string) (store.Snapshot, error) {
	var s store.Snapshot
	err := m.store.View(func(tx *store.Tx) (err error) { s, err = tx.ResolveSnapshot(ref); return })
	return s, err
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
