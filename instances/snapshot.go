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

// CheckTargetHypervisor checks a fork's or an in-place restore's
// target_hypervisor against the snapshot snapRef: the snapshot's own
// hypervisor (or none) passes; a Standby snapshot restores only into the
// hypervisor that saved it, and a hypervisor this host lacks is refused
// (both errdefs.ErrInvalidArgument, 400, as hypeman answers); moving a
// Stopped snapshot to another available hypervisor is not implemented.
func (m *Manager) CheckTargetHypervisor(ctx context.Context, snapRef, target string) error {
	if target == "" {
		return nil
	}
	snap, err := m.findSnapshot(snapRef)
	if err != nil {
		return err
	}
	switch {
	case target == snap.Spec.Hypervisor:
		return nil
	case SnapshotKind(snap.Kind) == SnapshotStandby:
		return fmt.Errorf("target_hypervisor %s: snapshot %s holds a running machine saved by %s, which only %s can restore: %w",
			target, snap.ID, snap.Spec.Hypervisor, snap.Spec.Hypervisor, errdefs.ErrInvalidArgument)
	}
	if _, ok := m.drivers[target]; !ok {
		return fmt.Errorf("target_hypervisor %q is not available on this host (available: %s): %w",
			target, strings.Join(m.Hypervisors(), ", "), errdefs.ErrInvalidArgument)
	}
	return fmt.Errorf("target_hypervisor %s: moving Stopped snapshot %s from %s to another hypervisor: %w",
		target, snap.ID, snap.Spec.Hypervisor, errdefs.ErrNotImplemented)
}
