package instances

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/cleanup"
	"github.com/zygote/zygote/internal/crashpoint"
	"github.com/zygote/zygote/internal/ids"
	"github.com/zygote/zygote/internal/names"
	"github.com/zygote/zygote/snapshots"
	"github.com/zygote/zygote/store"
)

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

// CreateSnapshot takes a named, immutable, fully owned copy of an
// instance. A Standby snapshot of a Running instance parks it, copies it
// and restores it, so the instance is Running again afterwards (even when
// the copy fails). A Standby snapshot of a Standby instance copies it as
// it is. A Stopped snapshot needs a Stopped instance and holds no memory.
func (m *Manager) CreateSnapshot(ctx context.Context, ref string, req SnapshotRequest) (store.Snapshot, error) {
	leave, err := m.enter()
	if err != nil {
		return store.Snapshot{}, err
	}
	defer leave()
	if _, err := ParseSnapshotKind(string(req.Kind)); err != nil {
		return store.Snapshot{}, err
	}
	if req.Name != "" {
		if err := names.Validate("snapshot name", req.Name); err != nil {
			return store.Snapshot{}, err
		}
	}
	if err := ValidateTags(req.Tags); err != nil {
		return store.Snapshot{}, err
	}
	inst, unlock, err := m.lockInstance(ctx, ref)
	if err != nil {
		return store.Snapshot{}, err
	}
	defer unlock()
	taken := false
	m.store.View(func(tx *store.Tx) error { taken = tx.SnapshotNameTaken(inst.ID, req.Name); return nil })
	if taken {
		return store.Snapshot{}, fmt.Errorf("instance %s already has a snapshot named %q: %w", inst.Name, req.Name, errdefs.ErrAlreadyExists)
	}
	state := m.view(inst).State
	switch {
	case req.Kind == store.SnapshotStandby && (state == StateRunning || state == StateStandby):
	case req.Kind == store.SnapshotStopped && state == StateStopped:
	default:
		return store.Snapshot{}, fmt.Errorf("cannot take a %s snapshot of instance %s: it is %s (Standby snapshots need Running or Standby, Stopped ones need Stopped): %w",
			req.Kind, inst.Name, state, errdefs.ErrInvalidState)
	}
	done := m.metrics.op("snapshot")
	snap, err := m.snapshotLocked(ctx, &inst, req, state == StateRunning)
	done(err)
	if err != nil {
		return store.Snapshot{}, fmt.Errorf("snapshot %s: %w", inst.Name, err)
	}
	return snap, nil
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
		ID: ids.New(), Name: req.Name, Kind: req.Kind, Tags: req.Tags,
		SourceInstanceID: inst.ID, SourceInstanceName: inst.Name, Spec: inst.Spec,
		Hostname: inst.Hostname, BootID: inst.BootID, CreatedAt: now(),
	}
	if req.Kind == store.SnapshotStandby {
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
	if req.Kind == store.SnapshotStopped {
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

// lockSnapshot resolves and locks a snapshot; forks from it and its
// deletion exclude each other.
func (m *Manager) lockSnapshot(ctx context.Context, ref string) (store.Snapshot, func(), error) {
	snap, err := m.GetSnapshot(ctx, ref)
	if err != nil {
		return snap, nil, err
	}
	l := m.lockFor(snap.ID)
	if err := l.lock(ctx); err != nil {
		return snap, nil, err
	}
	if err := m.store.View(func(tx *store.Tx) (err error) { snap, err = tx.Snapshot(snap.ID); return }); err != nil {
		l.unlock()
		return snap, nil, err
	}
	return snap, l.unlock, nil
}

// DeleteSnapshot removes a snapshot. Instances forked from it, and its
// source, are untouched: they own their files.
func (m *Manager) DeleteSnapshot(ctx context.Context, ref string) error {
	leave, err := m.enter()
	if err != nil {
		return err
	}
	defer leave()
	snap, unlock, err := m.lockSnapshot(ctx, ref)
	if err != nil {
		return err
	}
	defer unlock()
	intent := store.Intent{ID: snap.ID, Op: store.OpSnapshotDelete, SnapshotID: snap.ID}
	if err := m.putIntent(intent); err != nil {
		return err
	}
	if err := os.RemoveAll(m.snapshotDir(snap.ID)); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", snap.ID, err)
	}
	return m.store.Update(func(tx *store.Tx) error {
		if err := tx.DeleteSnapshot(snap.ID); err != nil {
			return err
		}
		return tx.DeleteIntent(intent.ID)
	})
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

// RestoreSnapshot replaces an instance's files with those of one of its
// own snapshots, then brings it to target (default: Running for a Standby
// snapshot, Stopped for a Stopped one). The instance must not be Running.
func (m *Manager) RestoreSnapshot(ctx context.Context, ref, snapRef string, target State) (Instance, error) {
	leave, err := m.enter()
	if err != nil {
		return Instance{}, err
	}
	defer leave()
	inst, unlock, err := m.lockInstance(ctx, ref)
	if err != nil {
		return Instance{}, err
	}
	defer unlock()
	// Check ownership before taking the snapshot's lock: a fork of that
	// snapshot holds it while it waits for its own (new) instances, and an
	// instance that is not the snapshot's source may be one of those.
	if snap, err := m.GetSnapshot(ctx, snapRef); err != nil {
		return Instance{}, err
	} else if snap.SourceInstanceID != inst.ID {
		return Instance{}, fmt.Errorf("snapshot %s belongs to instance %s, not %s: %w", snap.ID, snap.SourceInstanceName, inst.Name, errdefs.ErrInvalidArgument)
	}
	snap, sunlock, err := m.lockSnapshot(ctx, snapRef)
	if err != nil {
		return Instance{}, err
	}
	defer sunlock()
	if target, err = targetFor(snap.Kind, target); err != nil {
		return Instance{}, err
	}
	if v := m.view(inst); v.State != StateStopped && v.State != StateStandby {
		return Instance{}, invalidState("restore a snapshot into", inst, v.State)
	}
	done := m.metrics.op("snapshot_restore")
	err = m.restoreSnapshot(ctx, &inst, snap, target)
	done(err)
	if err != nil {
		return m.view(inst), fmt.Errorf("restore snapshot %s into %s: %w", snap.ID, inst.Name, err)
	}
	return m.view(inst), nil
}

// targetFor applies a snapshot kind's default target state and refuses a
// Standby target for a snapshot without memory.
func targetFor(kind store.SnapshotKind, target State) (State, error) {
	if target == "" {
		if kind == store.SnapshotStandby {
			return StateRunning, nil
		}
		return StateStopped, nil
	}
	switch target {
	case StateRunning, StateStopped:
		return target, nil
	case StateStandby:
		if kind == store.SnapshotStandby {
			return target, nil
		}
		return "", fmt.Errorf("a Stopped snapshot holds no memory: target state Standby is impossible: %w", errdefs.ErrInvalidArgument)
	}
	return "", fmt.Errorf("target state %q: want Running, Standby or Stopped: %w", target, errdefs.ErrInvalidArgument)
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
	os.RemoveAll(stagingDir(dir))
	if _, err := m.clone(ctx, m.snapshotDir(snap.ID), stagingDir(dir)); err != nil {
		os.RemoveAll(stagingDir(dir))
		m.dropIntent(intent.ID)
		return fmt.Errorf("copy snapshot files: %w", err)
	}
	os.Remove(filepath.Join(stagingDir(dir), snapshots.ManifestName))
	if err := os.Rename(dir, retiredDir(dir)); err != nil {
		os.RemoveAll(stagingDir(dir))
		m.dropIntent(intent.ID)
		return err
	}
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

// bringTo moves a Standby or Stopped instance (under its lock) to target.
func (m *Manager) bringTo(ctx context.Context, inst *store.Instance, target State) error {
	switch cur := m.view(*inst).State; {
	case cur == target:
		return nil
	case target == StateRunning && cur == StateStandby:
		return m.restore(ctx, inst)
	case target == StateRunning && cur == StateStopped:
		return m.startLocked(ctx, inst)
	case target == StateStopped:
		return m.stop(ctx, inst, true)
	default:
		return fmt.Errorf("cannot bring instance %s from %s to %s: %w", inst.Name, cur, target, errdefs.ErrInvalidState)
	}
}

// reconcileSnapshotIntent finishes or rolls back an interrupted snapshot
// operation:
//
//	snapshot          no record: remove the partial snapshot directory
//	snapshot_delete   roll forward: remove directory and record
//	snapshot_restore  staging copy not yet swapped in: drop it; swapped (or
//	                  half-swapped): finish the swap and commit the record
func (m *Manager) reconcileSnapshotIntent(ctx context.Context, in store.Intent) error {
	switch in.Op {
	case store.OpSnapshot:
		var exists bool
		m.store.View(func(tx *store.Tx) error { _, err := tx.Snapshot(in.SnapshotID); exists = err == nil; return nil })
		if !exists {
			return os.RemoveAll(m.snapshotDir(in.SnapshotID))
		}
		return nil
	case store.OpSnapshotDelete:
		if err := os.RemoveAll(m.snapshotDir(in.SnapshotID)); err != nil {
			return err
		}
		return m.store.Update(func(tx *store.Tx) error {
			if err := tx.DeleteSnapshot(in.SnapshotID); err != nil && !errdefs.IsNotFound(err) {
				return err
			}
			return nil
		})
	case store.OpSnapshotRestore:
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
