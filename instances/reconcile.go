package instances

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/internal/ids"
	"github.com/zygote/zygote/internal/proc"
	"github.com/zygote/zygote/store"
)

// Reconcile brings the store and the host into agreement at daemon start,
// before any request is served. For each intent a crash left behind:
//
//	create            roll back: kill its VMM, remove its directory
//	start             VMM alive: adopt it (Running); else stay Stopped
//	stop, delete      roll forward
//	standby           state file published: commit Standby (kill the VMM);
//	                  else VMM alive: resume it (Running); else Stopped
//	restore           state file still there: stay Standby (kill any VMM);
//	                  else VMM alive: adopt it (Running); else Stopped
//	snapshot, fork    see snapshot.go and fork.go
//
// Then every Running record is adopted (pid and start time checked) or
// marked Stopped; VMMs and directories no record owns are removed.
func (m *Manager) Reconcile(ctx context.Context) error {
	var intents []store.Intent
	if err := m.store.View(func(tx *store.Tx) (err error) { intents, err = tx.Intents(); return }); err != nil {
		return err
	}
	var errs []error
	for _, in := range intents {
		m.log.Info("reconcile: finishing interrupted operation", "op", in.Op, "instance", in.InstanceID, "snapshot", in.SnapshotID)
		if err := m.reconcileIntent(ctx, in); err != nil {
			errs = append(errs, fmt.Errorf("reconcile %s %s: %w", in.Op, in.ID, err))
			continue
		}
		m.dropIntent(in.ID)
	}
	var recs []store.Instance
	if err := m.store.View(func(tx *store.Tx) (err error) { recs, err = tx.Instances(); return }); err != nil {
		return err
	}
	known := map[string]bool{}
	for _, inst := range recs {
		known[inst.ID] = true
		m.sweepTemporaries(inst.ID)
		if m.runtimeOf(inst.ID) != nil {
			continue // adopted while reconciling its intent
		}
		if err := m.reconcileInstance(ctx, inst); err != nil {
			errs = append(errs, fmt.Errorf("reconcile instance %s: %w", inst.Name, err))
		}
	}
	errs = append(errs, m.removeOrphans(ctx, known), m.removeOrphanSnapshots())
	// Last, when every record and VMM is settled: sources parked by an
	// interrupted fork or snapshot go back to Running.
	m.mu.Lock()
	queue := m.resumeQueue
	m.resumeQueue = nil
	m.mu.Unlock()
	for _, id := range queue {
		m.resumeAfterReconcile(id)
	}
	return errors.Join(errs...)
}

// swapLeftover recognises "<id>.new" and "<id>.old".
func swapLeftover(name string) (string, bool) {
	for _, suffix := range []string{".new", ".old"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && ids.Valid(base) {
			return base, true
		}
	}
	return "", false
}

// removeOrphanSnapshots deletes snapshot directories no record owns.
func (m *Manager) removeOrphanSnapshots() error {
	var snaps []store.Snapshot
	if err := m.store.View(func(tx *store.Tx) (err error) { snaps, err = tx.Snapshots(); return }); err != nil {
		return err
	}
	known := map[string]bool{}
	for _, s := range snaps {
		known[s.ID] = true
	}
	entries, err := os.ReadDir(filepath.Join(m.cfg.DataDir, "snapshots"))
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if known[e.Name()] {
			continue
		}
		m.log.Info("reconcile: removing orphan snapshot directory", "dir", e.Name())
		if err := os.RemoveAll(m.snapshotDir(e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) reconcileIntent(ctx context.Context, in store.Intent) error {
	var inst store.Instance
	err := m.store.View(func(tx *store.Tx) (err error) { inst, err = tx.Instance(in.InstanceID); return })
	exists := err == nil
	switch in.Op {
	case store.OpCreate:
		if in.Pending != nil {
			m.killVMMs(ctx, *in.Pending)
		}
		return os.RemoveAll(m.instanceDir(in.InstanceID))
	case store.OpSnapshot, store.OpSnapshotDelete, store.OpSnapshotRestore:
		return m.reconcileSnapshotIntent(ctx, in)
	case store.OpFork:
		return m.reconcileForkIntent(ctx, in)
	case store.OpResume:
		m.mu.Lock()
		m.resumeQueue = append(m.resumeQueue, in.InstanceID)
		m.mu.Unlock()
		return nil
	case store.OpDelete:
		if exists {
			m.killVMMs(ctx, inst)
		}
		if err := os.RemoveAll(m.instanceDir(in.InstanceID)); err != nil {
			return err
		}
		if exists {
			return m.store.Update(func(tx *store.Tx) error { return tx.DeleteInstance(inst.ID) })
		}
		return nil
	}
	if !exists {
		return nil
	}
	d, err := m.driver(inst.Spec.Hypervisor)
	if err != nil {
		return err
	}
	dir := m.instanceDir(inst.ID)
	switch in.Op {
	case store.OpStart:
		if vm := m.adoptAny(ctx, inst); vm != nil {
			inst.State, inst.VMM, inst.StartedAt = store.Running, vmmRecord(vm), timePtr(now())
			if err := m.putInstance(inst); err != nil {
				return err
			}
			m.attachRuntime(inst, vm, nil)
		}
	case store.OpStop:
		m.killVMMs(ctx, inst)
		m.markStopped(&inst, "")
	case store.OpStandby:
		if d.HasSavedState(dir) {
			m.killVMMs(ctx, inst)
			inst.State, inst.VMM, inst.CacheKey = store.Standby, nil, ids.New()
			return m.putInstance(inst)
		}
		if vm := m.adoptAny(ctx, inst); vm != nil {
			if err := vm.Resume(ctx); err != nil {
				m.log.Warn("reconcile: resume after interrupted standby", "instance", inst.ID, "err", err)
			}
			m.attachRuntime(inst, vm, nil)
			return nil
		}
		m.markStopped(&inst, "the VMM exited during an interrupted standby")
	case store.OpRestore:
		if d.HasSavedState(dir) {
			m.killVMMs(ctx, inst)
			return nil
		}
		if vm := m.adoptAny(ctx, inst); vm != nil {
			inst.State, inst.VMM, inst.CacheKey = store.Running, vmmRecord(vm), ""
			if err := m.putInstance(inst); err != nil {
				return err
			}
			if paused, err := vm.Paused(ctx); err == nil && paused {
				vm.Resume(ctx)
			}
			m.attachRuntime(inst, vm, restoreNotice(inst))
			return nil
		}
		m.markStopped(&inst, "the VMM exited during an interrupted restore")
	}
	return nil
}

func (m *Manager) reconcileInstance(ctx context.Context, inst store.Instance) error {
	switch inst.State {
	case store.Running:
		vm := m.adoptAny(ctx, inst)
		if vm == nil {
			m.log.Warn("reconcile: VMM gone while the daemon was down", "instance", inst.ID, "name", inst.Name)
			m.markStopped(&inst, "the VMM exited while the daemon was not running")
			return nil
		}
		if paused, err := vm.Paused(ctx); err == nil && paused {
			if err := vm.Resume(ctx); err != nil {
				m.log.Warn("reconcile: resume a paused VMM", "instance", inst.ID, "err", err)
			}
		}
		if rec := vmmRecord(vm); inst.VMM == nil || *inst.VMM != *rec {
			inst.VMM = rec
			if err := m.putInstance(inst); err != nil {
				return err
			}
		}
		var notice *agent.RestoreInfo
		if inst.RestorePending {
			notice = restoreNotice(inst) // the last daemon died before telling the guest
		}
		m.attachRuntime(inst, vm, notice)
		m.log.Info("reconcile: adopted running VMM", "instance", inst.ID, "name", inst.Name, "pid", vm.Process().PID)
	default:
		m.killVMMs(ctx, inst)
	}
	return nil
}

// adoptAny attaches to the instance's live VMM: the recorded one, else any
// process the driver recognises as running this instance's directory. A
// VMM it cannot attach to after a few tries (a wedged monitor) is killed,
// so a nil result always means no VMM runs this directory: the caller may
// then record the instance Stopped and discard its memory without
// stranding a live guest.
func (m *Manager) adoptAny(ctx context.Context, inst store.Instance) hypervisor.VM {
	d, err := m.driver(inst.Spec.Hypervisor)
	if err != nil {
		return nil
	}
	spec := m.specOf(inst)
	var cands []hypervisor.Process
	if inst.VMM != nil {
		cands = append(cands, hypervisor.Process{PID: inst.VMM.PID, StartTime: inst.VMM.StartTime})
	}
	found, _ := d.Find(spec)
	cands = append(cands, found...)
	for _, p := range cands {
		for attempt := 1; attempt <= 3; attempt++ {
			vm, err := d.Attach(ctx, spec, p)
			if err == nil {
				// Any other VMM for this directory is a leftover.
				for _, other := range found {
					if other != p {
						m.killVMM(ctx, d, spec, other)
					}
				}
				return vm
			}
			m.log.Warn("reconcile: cannot attach to the VMM", "instance", inst.ID, "pid", p.PID, "attempt", attempt, "err", err)
			if errdefs.IsNotFound(err) {
				break // gone, or not this instance's
			}
		}
	}
	m.killVMMs(ctx, inst)
	return nil
}

// killVMMs ends every VMM running inst's directory.
func (m *Manager) killVMMs(ctx context.Context, inst store.Instance) {
	spec := m.specOf(inst)
	for _, d := range m.drivers {
		found, _ := d.Find(spec)
		for _, p := range found {
			m.log.Info("reconcile: killing leftover VMM", "instance", inst.ID, "pid", p.PID)
			m.killVMM(ctx, d, spec, p)
		}
	}
}

// killVMM ends a VMM through its driver (which may flush and exit
// cleanly), or with SIGKILL when the driver cannot attach to it.
func (m *Manager) killVMM(ctx context.Context, d hypervisor.Driver, spec hypervisor.Spec, p hypervisor.Process) {
	if vm, err := d.Attach(ctx, spec, p); err == nil {
		vm.Quit(ctx)
		return
	}
	h, err := proc.Open(p.PID, p.StartTime)
	if err != nil {
		return
	}
	defer h.Close()
	h.Signal(syscall.SIGKILL)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	h.Wait(wctx)
}

// removeOrphans deletes instance directories (and their VMMs) that no
// record owns.
func (m *Manager) removeOrphans(ctx context.Context, known map[string]bool) error {
	entries, err := os.ReadDir(filepath.Join(m.cfg.DataDir, "instances"))
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if known[e.Name()] {
			continue
		}
		if _, ok := swapLeftover(e.Name()); ok {
			// A snapshot restore committed, then crashed before cleanup
			// (or its instance is gone since).
			m.log.Info("reconcile: removing leftover of a snapshot restore", "dir", e.Name())
			if err := os.RemoveAll(filepath.Join(filepath.Join(m.cfg.DataDir, "instances"), e.Name())); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if clone.IsTempName(e.Name()) {
			m.log.Info("reconcile: removing an interrupted copy", "dir", e.Name())
			if err := os.RemoveAll(filepath.Join(filepath.Join(m.cfg.DataDir, "instances"), e.Name())); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if !ids.Valid(e.Name()) {
			m.log.Warn("reconcile: unexpected entry in the instances directory, left alone", "name", e.Name())
			continue
		}
		m.log.Info("reconcile: removing orphan instance directory", "instance", e.Name())
		m.killVMMs(ctx, store.Instance{ID: e.Name()})
		if err := os.RemoveAll(m.instanceDir(e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// resumeAfterReconcile restores, in the background once the reconcile is
// done, a source that a fork or snapshot parked when a crash hit: it was
// Running before the operation and must be again.
func (m *Manager) resumeAfterReconcile(id string) {
	leave, err := m.enter()
	if err != nil {
		return
	}
	go func() { // owner: the manager: an operation Close waits for
		defer leave()
		ctx := context.Background()
		l := m.lockFor(id)
		if err := l.lock(ctx); err != nil {
			return
		}
		defer l.unlock()
		var inst store.Instance
		if err := m.store.View(func(tx *store.Tx) (err error) { inst, err = tx.Instance(id); return }); err != nil {
			return
		}
		if m.view(inst).State != StateStandby {
			return
		}
		m.log.Info("reconcile: restoring a source parked by an interrupted fork or snapshot", "instance", id, "name", inst.Name)
		if err := m.restore(ctx, &inst); err != nil {
			m.log.Error("reconcile: restore the parked source", "instance", id, "err", err)
		}
	}()
}

// sweepTemporaries removes what a crash left inside an instance directory
// half-written: a state file being saved, a densify copy (which can be as
// large as the guest's RAM).
func (m *Manager) sweepTemporaries(id string) {
	entries, _ := os.ReadDir(m.instanceDir(id))
	for _, e := range entries {
		if clone.IsTempName(e.Name()) {
			m.log.Info("reconcile: removing an interrupted temporary", "instance", id, "file", e.Name())
			os.RemoveAll(filepath.Join(m.instanceDir(id), e.Name()))
		}
	}
}
