package instances

import (
	"context"
	"fmt"
	"os"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/cleanup"
	"github.com/zygote/zygote/internal/crashpoint"
	"github.com/zygote/zygote/internal/ids"
	"github.com/zygote/zygote/internal/names"
	"github.com/zygote/zygote/snapshots"
	"github.com/zygote/zygote/store"
)

// CreateSnapshot takes a named, immutable, fully owned copy of an
// instance. A Standby snapshot of a Running instance parks it, copies it
// and restores it, so the instance is Running again afterwards (even when
// the copy fails). A Standby snapshot of a Standby instance copies it as
// it is. A Stopped snapshot needs a Stopped instance and holds no memory.
func (m *Manager) CreateSnapshot(ctx context.Context, ref string, req SnapshotRequest) (Snapshot, error) {
	var snap store.Snapshot
	_, err := m.run(ctx, operation{
		name: "snapshot", instance: ref,
		validate: func() error {
			if _, err := ParseSnapshotKind(string(req.Kind)); err != nil {
				return err
			}
			if req.Name != "" {
				if err := names.Validate("snapshot name", req.Name); err != nil {
					return err
				}
			}
			return ValidateTags(req.Tags)
		},
		check: func(t *targets) error {
			if err := refuseWritableVolumes("snapshot", t.inst); err != nil {
				return err
			}
			taken := false
			m.store.View(func(tx *store.Tx) error { taken = tx.SnapshotNameTaken(t.inst.ID, req.Name); return nil })
			if taken {
				return fmt.Errorf("instance %s already has a snapshot named %q: %w", t.inst.Name, req.Name, errdefs.ErrAlreadyExists)
			}
			switch {
			case req.Kind == SnapshotStandby && (t.state == StateRunning || t.state == StateStandby):
			case req.Kind == SnapshotStopped && t.state == StateStopped:
			default:
				return fmt.Errorf("cannot take a %s snapshot of instance %s: it is %s (Standby snapshots need Running or Standby, Stopped ones need Stopped): %w",
					req.Kind, t.inst.Name, t.state, errdefs.ErrInvalidState)
			}
			return nil
		},
	}, func(t *targets) (err error) {
		snap, err = m.snapshotLocked(ctx, &t.inst, req, t.state == StateRunning)
		return err
	})
	if err != nil {
		return Snapshot{}, err
	}
	return snapshotOf(snap), nil
}

// snapshotLocked runs under inst's lock. Parking a running source reuses
// standby and restore, each with its own intent, inside an OpResume intent
// (park), so a crash in between leaves the source restorable and the
// reconcile restores it; the snapshot's own intent only covers its
// directory.
func (m *Manager) snapshotLocked(ctx context.Context, inst *store.Instance, req SnapshotRequest, running bool) (snap store.Snapshot, err error) {
	if running {
		resume, err := m.park(ctx, inst)
		if err != nil {
			return snap, err
		}
		defer resume()
	}
	return m.copyToSnapshot(ctx, *inst, req)
}

// copyToSnapshot copies a parked or stopped instance's directory into a
// new snapshot directory and commits the snapshot.
func (m *Manager) copyToSnapshot(ctx context.Context, inst store.Instance, req SnapshotRequest) (store.Snapshot, error) {
	snap := store.Snapshot{
		ID: ids.New(), Name: req.Name, Kind: store.SnapshotKind(req.Kind), Tags: req.Tags,
		SourceInstanceID: inst.ID, SourceInstanceName: inst.Name, Spec: inst.Spec,
		Hostname: inst.Hostname, BootID: inst.BootID, CreatedAt: now(),
	}
	if req.Kind == SnapshotStandby {
		snap.CacheKey = inst.CacheKey
	}
	intent := store.Intent{ID: snap.ID, Op: store.OpSnapshot, SnapshotID: snap.ID, SourceID: inst.ID}
	if err := m.putIntent(intent); err != nil {
		return snap, err
	}
	undo := cleanup.New()
	defer undo.Run(ctx)
	undo.Add("drop intent", func(context.Context) error { m.dropIntent(intent.ID); return nil })
	dir := m.snapshotDir(snap.ID)
	if _, err := m.clone(ctx, m.instanceDir(inst.ID), dir); err != nil {
		return snap, fmt.Errorf("copy instance files: %w", err)
	}
	undo.Add("remove snapshot directory", func(context.Context) error { return os.RemoveAll(dir) })
	if req.Kind == SnapshotStopped {
		// A stopped instance has no memory; make sure no stale image rides
		// along.
		if d, err := m.driver(inst.Spec.Hypervisor); err == nil {
			if err := d.DiscardSavedState(dir); err != nil {
				return snap, err
			}
		}
	}
	size, err := snapshots.Write(dir, manifestOf(snap))
	if err != nil {
		return snap, err
	}
	crashpoint.Hit(crashpoint.SnapshotCopied)
	snap.SizeBytes = size
	err = m.store.Update(func(tx *store.Tx) error {
		if err := tx.PutSnapshot(snap); err != nil {
			return err
		}
		return tx.DeleteIntent(intent.ID)
	})
	if err != nil {
		return snap, err
	}
	undo.Release()
	m.log.Info("snapshot created", "snapshot", snap.ID, "name", snap.Name, "instance", inst.ID, "kind", snap.Kind, "bytes", snap.SizeBytes)
	return snap, nil
}

// reconcileSnapshot is the crash rule of a snapshot: without a record the
// partial snapshot directory goes; with one, the snapshot was committed.
func (m *Manager) reconcileSnapshot(ctx context.Context, in store.Intent) error {
	var exists bool
	m.store.View(func(tx *store.Tx) error { _, err := tx.Snapshot(in.SnapshotID); exists = err == nil; return nil })
	if !exists {
		return os.RemoveAll(m.snapshotDir(in.SnapshotID))
	}
	return nil
}
