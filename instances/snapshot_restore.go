package instances

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/cleanup"
	"github.com/zygote/zygote/internal/crashpoint"
	"github.com/zygote/zygote/snapshots"
	"github.com/zygote/zygote/store"
)

// RestoreSnapshot replaces an instance's files with those of one of its
// own snapshots, then brings it to target (default: Running for a Standby
// snapshot, Stopped for a Stopped one). The instance must not be Running.
func (m *Manager) RestoreSnapshot(ctx context.Context, ref, snapRef string, target State) (Instance, error) {
	t, err := m.run(ctx, operation{
		name: "snapshot_restore", instance: ref, snapshot: snapRef,
		// Check ownership before taking the snapshot's lock: a fork of that
		// snapshot holds it while it waits for its own (new) instances, and
		// an instance that is not the snapshot's source may be one of those.
		beforeSnapshot: func(t *targets) error {
			snap, err := m.findSnapshot(snapRef)
			if err != nil {
				return err
			}
			if snap.SourceInstanceID != t.inst.ID {
				return fmt.Errorf("snapshot %s belongs to instance %s, not %s: %w", snap.ID, snap.SourceInstanceName, t.inst.Name, errdefs.ErrInvalidArgument)
			}
			return nil
		},
		check: func(t *targets) (err error) {
			if target, err = targetFor(SnapshotKind(t.snap.Kind), target); err != nil {
				return err
			}
			if t.state != StateStopped && t.state != StateStandby {
				return invalidState("restore a snapshot into", t.inst, t.state)
			}
			return nil
		},
		label: func(t *targets) string { return fmt.Sprintf("restore snapshot %s into %s", t.snap.ID, t.inst.Name) },
	}, func(t *targets) error {
		return m.restoreSnapshot(ctx, &t.inst, t.snap, target)
	})
	if t == nil {
		return Instance{}, err
	}
	return m.view(t.inst), err
}

// staging names used while an instance directory is swapped; not valid
// ids, so they never collide with an instance.
func stagingDir(dir string) string { return dir + ".new" }
func retiredDir(dir string) string { return dir + ".old" }

// restoreSnapshot copies the snapshot beside the instance directory,
// swaps the two with renames and commits the record the snapshot
// describes; the replaced directory is removed only after the commit. A
// crash is finished by the reconcile: once the old directory has been moved
// aside the swap rolls forward, before that it rolls back.
func (m *Manager) restoreSnapshot(ctx context.Context, inst *store.Instance, snap store.Snapshot, target State) error {
	if err := m.verifiedSnapshot(snap); err != nil {
		return err
	}
	dir := m.instanceDir(inst.ID)
	intent := store.Intent{ID: inst.ID, Op: store.OpSnapshotRestore, InstanceID: inst.ID, SnapshotID: snap.ID}
	if err := m.putIntent(intent); err != nil {
		return err
	}
	undo := cleanup.New()
	defer undo.Run(ctx)
	undo.Add("drop snapshot restore intent", func(context.Context) error { m.dropIntent(intent.ID); return nil })
	os.RemoveAll(stagingDir(dir))
	undo.Add("remove the staging copy", func(context.Context) error { return os.RemoveAll(stagingDir(dir)) })
	if _, err := m.clone(ctx, m.snapshotDir(snap.ID), stagingDir(dir)); err != nil {
		return fmt.Errorf("copy snapshot files: %w", err)
	}
	os.Remove(filepath.Join(stagingDir(dir), snapshots.ManifestName))
	if err := os.Rename(dir, retiredDir(dir)); err != nil {
		return err
	}
	// Moved aside: from here on the swap only rolls forward.
	undo.Release()
	crashpoint.Hit(crashpoint.SwapMovedAside)
	if err := os.Rename(stagingDir(dir), dir); err != nil {
		return err // the reconcile rolls forward
	}
	describeSnapshot(inst, snap)
	if err := m.commit(*inst, intent.ID); err != nil {
		return err
	}
	if err := os.RemoveAll(retiredDir(dir)); err != nil {
		m.log.Warn("remove the replaced instance directory", "dir", retiredDir(dir), "err", err)
	}
	return m.bringTo(ctx, inst, target)
}

// describeSnapshot makes inst's record describe the snapshot's machine and
// memory, as its directory now does.
func describeSnapshot(inst *store.Instance, snap store.Snapshot) {
	inst.Spec, inst.Hostname, inst.BootID = snap.Spec, snap.Hostname, snap.BootID
	inst.StartedAt, inst.StoppedAt, inst.ExitCode, inst.ExitMessage, inst.VMM = nil, nil, nil, "", nil
	if snap.Kind == store.SnapshotStandby {
		inst.State, inst.CacheKey = store.Standby, snap.CacheKey
	} else {
		inst.State, inst.CacheKey = store.Stopped, ""
	}
}

// reconcileSnapshotRestore is the crash rule of a snapshot restore: a
// staging copy not yet swapped in is dropped; a swapped (or half-swapped)
// one is finished and the record the snapshot describes committed.
func (m *Manager) reconcileSnapshotRestore(ctx context.Context, in store.Intent) error {
	dir := m.instanceDir(in.InstanceID)
	if _, err := os.Stat(retiredDir(dir)); err != nil {
		return os.RemoveAll(stagingDir(dir)) // not swapped: roll back
	}
	var inst store.Instance
	var snap store.Snapshot
	err := m.store.View(func(tx *store.Tx) (err error) {
		if inst, err = tx.Instance(in.InstanceID); err != nil {
			return err
		}
		snap, err = tx.Snapshot(in.SnapshotID)
		return err
	})
	if err != nil {
		return err
	}
	if _, err := os.Stat(dir); err != nil {
		if err := os.Rename(stagingDir(dir), dir); err != nil {
			return fmt.Errorf("finish the swap: %w", err)
		}
	}
	describeSnapshot(&inst, snap)
	if err := m.putInstance(inst); err != nil {
		return err
	}
	return os.RemoveAll(retiredDir(dir))
}
