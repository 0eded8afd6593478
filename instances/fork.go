package instances

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/cleanup"
	"github.com/zygote/zygote/internal/crashpoint"
	"github.com/zygote/zygote/internal/ids"
	"github.com/zygote/zygote/internal/names"
	"github.com/zygote/zygote/snapshots"
	"github.com/zygote/zygote/store"
)

// ForkRequest describes one fork, or a batch of forks of one source.
type ForkRequest struct {
	// Name of the fork; or, for a batch, NamePrefix and Count make
	// <prefix>-1 … <prefix>-<count>.
	Name       string
	NamePrefix string
	Count      int
	// FromRunning allows forking a Running source: it is parked once,
	// forked, and restored (Running again even if the fork fails).
	FromRunning bool
	// TargetState defaults to the source's state (for a snapshot: Running
	// for a Standby snapshot, Stopped for a Stopped one).
	TargetState State
	// Memory is how the forks hold the source's memory (sharing.go):
	// their own copies (MemoryOwned) or one shared immutable file
	// (MemoryShared); "" is the daemon's default (Config.ForkMemory). A
	// fork of a source without memory (Stopped) owns what it boots.
	Memory MemoryMode
}

// MaxBatch bounds a batch fork.
const MaxBatch = 64

// forkNamesOf validates the request's names.
func forkNamesOf(req ForkRequest) ([]string, error) {
	if req.Count == 0 && req.NamePrefix == "" {
		if err := names.Validate("fork name", req.Name); err != nil {
			return nil, err
		}
		return []string{req.Name}, nil
	}
	if req.Name != "" {
		return nil, fmt.Errorf("give either name, or name_prefix and count: %w", errdefs.ErrInvalidArgument)
	}
	if req.Count < 1 || req.Count > MaxBatch {
		return nil, fmt.Errorf("count must be between 1 and %d, got %d: %w", MaxBatch, req.Count, errdefs.ErrInvalidArgument)
	}
	out := make([]string, req.Count)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", req.NamePrefix, i+1)
		if err := names.Validate("fork name", out[i]); err != nil {
			return nil, fmt.Errorf("name_prefix %q: %w", req.NamePrefix, err)
		}
	}
	return out, nil
}

// forkSource is what a fork copies: a parked or stopped instance's
// directory, or a snapshot's.
type forkSource struct {
	dir       string
	spec      store.Spec
	cacheKey  string
	bootID    string
	hasMemory bool
	origin    store.Origin
	// manifest: the copy carries a snapshot manifest to drop.
	manifest bool
	// memory: how the forks hold the source's memory file.
	memory MemoryMode
	// relinkVolumes: the source is an instance whose (read-only) volumes
	// cannot have changed, so a fork attaches the volumes themselves, not
	// the copies (a snapshot's copies stay: the volume may have moved on
	// since, and the saved guest may cache their old blocks).
	relinkVolumes bool
}

// Fork makes new instances from an instance. Each fork owns its files from
// the moment it exists: its memory file is a copy (reflink-first), never a
// reference into the source, so nothing later done to the source can
// touch it (DESIGN invariants 1–3).
//
// Phases (each below in this file):
//
//	validate → lock the source → park it if running → copy → commit
//	→ bring the forks to their target state → restore the source
func (m *Manager) Fork(ctx context.Context, ref string, req ForkRequest) ([]Instance, error) {
	var forkNames []string
	var target State
	var out []Instance
	_, err := m.run(ctx, operation{
		name: "fork", instance: ref,
		validate: func() (err error) {
			if _, err := ParseMemoryMode(string(req.Memory)); err != nil {
				return err
			}
			forkNames, err = forkNamesOf(req)
			return err
		},
		check: func(t *targets) error {
			if err := refuseWritableVolumes("fork", t.inst); err != nil {
				return err
			}
			switch t.state {
			case StateStandby, StateStopped:
			case StateRunning:
				if !req.FromRunning {
					return fmt.Errorf("instance %s is Running: fork it with from_running (it is parked for the copy and restored after): %w", t.inst.Name, errdefs.ErrInvalidState)
				}
			default:
				return invalidState("fork", t.inst, t.state)
			}
			if target = req.TargetState; target == "" {
				target = t.state
			}
			return checkTarget(target, t.state != StateStopped)
		},
	}, func(t *targets) (err error) {
		mode, err := m.forkMemoryMode(req.Memory, t.inst.Spec.Hypervisor)
		if err != nil {
			return err
		}
		out, err = m.forkInstance(ctx, &t.inst, t.state, forkNames, target, mode)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func checkTarget(target State, hasMemory bool) error {
	switch target {
	case StateRunning, StateStopped:
		return nil
	case StateStandby:
		if hasMemory {
			return nil
		}
		return fmt.Errorf("the source holds no memory (it is Stopped): a fork cannot be Standby: %w", errdefs.ErrInvalidArgument)
	}
	return fmt.Errorf("target state %q: want Running, Standby or Stopped: %w", target, errdefs.ErrInvalidArgument)
}

// forkInstance runs under the source's lock.
func (m *Manager) forkInstance(ctx context.Context, src *store.Instance, state State, forkNames []string, target State, mode MemoryMode) (out []Instance, err error) {
	if state == StateRunning {
		resume, perr := m.park(ctx, src)
		if perr != nil {
			return nil, perr
		}
		crashpoint.Hit(crashpoint.ForkParked)
		defer resume()
	}
	fs := forkSource{
		dir: m.instanceDir(src.ID), spec: src.Spec, cacheKey: src.CacheKey, bootID: src.BootID,
		hasMemory:     src.State == store.Standby,
		origin:        store.Origin{InstanceID: src.ID, InstanceName: src.Name},
		memory:        mode,
		relinkVolumes: true,
	}
	return m.forkFrom(ctx, fs, forkNames, target)
}

// ForkSnapshot makes new instances from a snapshot.
func (m *Manager) ForkSnapshot(ctx context.Context, snapRef string, req ForkRequest) ([]Instance, error) {
	var forkNames []string
	var target State
	var out []Instance
	_, err := m.run(ctx, operation{
		name: "fork", snapshot: snapRef,
		validate: func() (err error) {
			if req.FromRunning {
				return fmt.Errorf("from_running applies to instances, not snapshots: %w", errdefs.ErrInvalidArgument)
			}
			if _, err := ParseMemoryMode(string(req.Memory)); err != nil {
				return err
			}
			forkNames, err = forkNamesOf(req)
			return err
		},
		check: func(t *targets) (err error) {
			if target, err = targetFor(SnapshotKind(t.snap.Kind), req.TargetState); err != nil {
				return err
			}
			return m.verifiedSnapshot(t.snap)
		},
		label: func(t *targets) string { return "fork snapshot " + t.snap.ID },
	}, func(t *targets) (err error) {
		snap := t.snap
		mode, err := m.forkMemoryMode(req.Memory, snap.Spec.Hypervisor)
		if err != nil {
			return err
		}
		out, err = m.forkFrom(ctx, forkSource{
			dir: m.snapshotDir(snap.ID), spec: snap.Spec, cacheKey: snap.CacheKey, bootID: snap.BootID,
			hasMemory: snap.Kind == store.SnapshotStandby, manifest: true, memory: mode,
			origin: store.Origin{SnapshotID: snap.ID, InstanceID: snap.SourceInstanceID, InstanceName: snap.SourceInstanceName},
		}, forkNames, target)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// forkFrom makes one fork per name from src, all or nothing. Each fork is
// locked before its record becomes visible and stays locked until it has
// reached its target state, so nobody acts on a half-made fork. One intent
// names every fork of the call: a crash before the call returns removes
// them all.
func (m *Manager) forkFrom(ctx context.Context, src forkSource, forkNames []string, target State) ([]Instance, error) {
	for i, name := range forkNames {
		if err := m.reserveName(name); err != nil {
			for _, n := range forkNames[:i] {
				m.releaseName(n)
			}
			return nil, err
		}
	}
	defer func() {
		for _, n := range forkNames {
			m.releaseName(n)
		}
	}()
	forks := make([]store.Instance, len(forkNames))
	members := make([]string, len(forkNames))
	for i, name := range forkNames {
		forks[i] = m.newFork(src, name)
		members[i] = forks[i].ID
		l := m.lockFor(forks[i].ID)
		if err := l.lock(ctx); err != nil { // fresh ids: never contended
			return nil, err
		}
		defer l.unlock()
	}
	intent := store.Intent{ID: ids.New(), Op: store.OpFork, SourceID: src.origin.InstanceID, Members: members}
	if err := m.putIntent(intent); err != nil {
		return nil, err
	}
	undo := cleanup.New()
	defer func() {
		if err := undo.Run(ctx); err != nil {
			m.log.Error("roll back fork", "err", err)
		}
	}()
	undo.Add("drop fork intent", func(context.Context) error { m.dropIntent(intent.ID); return nil })
	begin := time.Now()
	for i := range forks {
		f := &forks[i]
		undo.Add("delete fork "+f.Name, func(ctx context.Context) error { return m.removeFork(ctx, f.ID) })
		if err := m.copyFork(ctx, src, f); err != nil {
			return nil, err
		}
	}
	copied := time.Since(begin)
	if err := m.bringAll(ctx, forks, target); err != nil {
		return nil, err
	}
	m.dropIntent(intent.ID)
	undo.Release()
	out := make([]Instance, len(forks))
	for i, f := range forks {
		out[i] = m.view(f)
		m.log.Info("instance forked", "instance", f.ID, "name", f.Name, "from", src.origin.InstanceName,
			"snapshot", src.origin.SnapshotID, "target", target, "copy", copied, "total", time.Since(begin))
	}
	return out, nil
}

// newFork is the record of a fork in the state of its source's files
// (Standby with memory, else Stopped). Its cache key is the source's: the
// copy is byte-identical.
func (m *Manager) newFork(src forkSource, name string) store.Instance {
	f := store.Instance{
		ID: ids.New(), Name: name, Spec: src.spec, CreatedAt: now(), Hostname: name,
		BootID: src.bootID, ForkedFrom: &src.origin, State: store.Stopped,
	}
	if src.hasMemory {
		f.State, f.CacheKey, f.NewIdentity = store.Standby, src.cacheKey, true
		f.MemoryShared = src.memory == MemoryShared
	}
	return f
}

// copyFork copies the source's files into the fork's own directory and
// commits its record. The caller holds the fork's lock.
func (m *Manager) copyFork(ctx context.Context, src forkSource, f *store.Instance) error {
	begin := time.Now()
	dir := m.instanceDir(f.ID)
	if _, err := m.clone(ctx, src.dir, dir, m.sharedMemoryFiles(*f)...); err != nil {
		return fmt.Errorf("copy %s: %w", filepath.Base(src.dir), err)
	}
	if src.manifest {
		if err := os.Remove(filepath.Join(dir, snapshots.ManifestName)); err != nil {
			return err
		}
	}
	if !src.hasMemory {
		if d, err := m.driver(f.Spec.Hypervisor); err == nil {
			if err := d.DiscardSavedState(dir); err != nil {
				return err
			}
		}
	}
	if src.relinkVolumes {
		if err := m.relinkVolumes(*f, dir); err != nil {
			return err
		}
	}
	crashpoint.Hit(crashpoint.ForkCopied)
	if f.MemoryShared {
		// The copy's own memory file gives way to a link of the source's:
		// the fork and the source (and its other sharing forks) now hold one
		// immutable file (sharing.go).
		if err := m.linkForkMemory(src, f); err != nil {
			return err
		}
		crashpoint.Hit(crashpoint.ForkLinked)
	}
	if err := m.putInstance(*f); err != nil {
		return err
	}
	m.forkPhase(*f, phaseCopy, time.Since(begin))
	if f.Spec.Network {
		// Its own slot, from the pool, before its restore: a new address,
		// the same guest. The fork intent covers it (reconcileFork).
		begin := time.Now()
		if _, err := m.slotOf(ctx, *f); err != nil {
			return err
		}
		m.forkPhase(*f, phaseNetworkSlot, time.Since(begin))
		crashpoint.Hit(crashpoint.ForkSlotAcquired)
	}
	return nil
}

// bringAll brings fresh forks (whose locks the caller holds) to target,
// several at a time: restores of forks are independent, and a batch is
// only as fast as its slowest.
func (m *Manager) bringAll(ctx context.Context, forks []store.Instance, target State) error {
	const parallel = 8
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	errs := make([]error, len(forks))
	for i := range forks {
		wg.Add(1)
		sem <- struct{}{}
		go func() { // owner: bringAll, which waits for it
			defer wg.Done()
			defer func() { <-sem }()
			begin := time.Now()
			if err := m.bringTo(ctx, &forks[i], target); err != nil {
				errs[i] = fmt.Errorf("bring fork %s to %s: %w", forks[i].Name, target, err)
				return
			}
			m.forkPhase(forks[i], phaseRestore, time.Since(begin))
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// removeFork deletes a fork a failed call made (the caller holds its
// lock): its VMM, its directory and its record if committed.
func (m *Manager) removeFork(ctx context.Context, id string) error {
	var inst store.Instance
	if err := m.store.View(func(tx *store.Tx) (err error) { inst, err = tx.Instance(id); return }); err != nil {
		if errdefs.IsNotFound(err) {
			return os.RemoveAll(m.instanceDir(id))
		}
		return err
	}
	return m.delete(ctx, inst, true)
}

// reconcileFork is the crash rule of a fork call: every fork of it goes
// (forks are all or nothing, and the client never heard of these).
func (m *Manager) reconcileFork(ctx context.Context, in store.Intent) error {
	var errs []error
	for _, id := range in.Members {
		m.killVMMs(ctx, store.Instance{ID: id})
		if err := m.releaseSlot(ctx, id); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.RemoveAll(m.instanceDir(id)); err != nil {
			errs = append(errs, err)
			continue
		}
		err := m.store.Update(func(tx *store.Tx) error {
			if err := tx.DeleteInstance(id); err != nil && !errdefs.IsNotFound(err) {
				return err
			}
			return nil
		})
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
