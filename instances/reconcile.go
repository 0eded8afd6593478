package instances

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/internal/ids"
	"github.com/zygote/zygote/store"
)

// Reconcile brings the store and the host into agreement at daemon start,
// before any request is served:
//
//  1. each intent a crash left behind is finished or rolled back by the
//     recovery rule of its operation (recoveryRules);
//  2. every Running record is adopted (pid and start time checked) or
//     marked Stopped;
//  3. one sweep of the instances and snapshots directories removes what
//     no record owns (and the VMMs running it); the network releases the
//     slots no instance owns and rebuilds lost ones (network.go);
//  4. sources parked by an interrupted fork or snapshot are restored.
func (m *Manager) Reconcile(ctx context.Context) error {
	var intents []store.Intent
	if err := m.store.View(func(tx *store.Tx) (err error) { intents, err = tx.Intents(); return }); err != nil {
		return err
	}
	var errs []error
	for _, in := range intents {
		m.log.Info("reconcile: finishing interrupted operation", "op", in.Op, "instance", in.InstanceID, "snapshot", in.SnapshotID)
		if err := m.recover(ctx, in); err != nil {
			errs = append(errs, fmt.Errorf("reconcile %s %s: %w", in.Op, in.ID, err))
			continue
		}
		m.dropIntent(in.ID)
	}
	var recs []store.Instance
	var snaps []store.Snapshot
	err := m.store.View(func(tx *store.Tx) (err error) {
		if recs, err = tx.Instances(); err != nil {
			return err
		}
		snaps, err = tx.Snapshots()
		return err
	})
	if err != nil {
		return err
	}
	instances, snapshots := map[string]bool{}, map[string]bool{}
	for _, inst := range recs {
		instances[inst.ID] = true
		m.sweepTemporaries(inst.ID)
		if m.runtimeOf(inst.ID) != nil {
			continue // adopted while reconciling its intent
		}
		if err := m.reconcileInstance(ctx, inst); err != nil {
			errs = append(errs, fmt.Errorf("reconcile instance %s: %w", inst.Name, err))
		}
	}
	for _, s := range snaps {
		snapshots[s.ID] = true
	}
	errs = append(errs,
		m.sweep("instances", instances, func(id string) { m.killVMMs(ctx, store.Instance{ID: id}) }),
		m.sweep("snapshots", snapshots, nil),
		m.reconcileNetwork(ctx, recs))
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

// recoveryRules maps each journaled operation to the rule that finishes or
// rolls back its half-done work. Each rule lives in its operation's file,
// next to the code whose work it finishes, and never calls back into this
// file:
//
//	create            roll back: kill its VMM, release its network slot, create.go
//	                  remove its directory
//	start             VMM alive: adopt it (Running); else stay Stopped   start.go
//	stop              roll forward                                        stop.go
//	standby           state file published: commit Standby; else VMM     standby.go
//	                  alive: resume it (Running); else Stopped
//	restore           state file still there: stay Standby (a broken     restore.go
//	                  link left an own identical copy, a temporary is
//	                  swept); else VMM alive: adopt it (Running); else
//	                  Stopped
//	delete            roll forward (the network slot released too)        delete.go
//	fork              remove every fork of the call and its slot (a       fork.go
//	                  sharing fork's link with it: the source's file is
//	                  untouched)
//	resume            restore the parked source, last                     park.go
//	snapshot          no record: remove the partial directory             snapshot_create.go
//	snapshot_restore  not swapped: drop the copy; else finish the swap    snapshot_restore.go
//	snapshot_delete   roll forward                                        snapshot_delete.go
var recoveryRules = map[store.Op]func(m *Manager, ctx context.Context, in store.Intent) error{
	store.OpCreate:          (*Manager).reconcileCreate,
	store.OpStart:           onInstance((*Manager).reconcileStart),
	store.OpStop:            onInstance((*Manager).reconcileStop),
	store.OpStandby:         onInstance((*Manager).reconcileStandby),
	store.OpRestore:         onInstance((*Manager).reconcileRestore),
	store.OpDelete:          (*Manager).reconcileDelete,
	store.OpFork:            (*Manager).reconcileFork,
	store.OpResume:          (*Manager).reconcileResume,
	store.OpSnapshot:        (*Manager).reconcileSnapshot,
	store.OpSnapshotRestore: (*Manager).reconcileSnapshotRestore,
	store.OpSnapshotDelete:  (*Manager).reconcileSnapshotDelete,
}

// recover runs the recovery rule of an intent's operation.
func (m *Manager) recover(ctx context.Context, in store.Intent) error {
	rule, ok := recoveryRules[in.Op]
	if !ok {
		return fmt.Errorf("no recovery rule for operation %q (written by a newer zygote?)", in.Op)
	}
	return rule(m, ctx, in)
}

// onInstance adapts a rule of an operation on one existing instance: it
// gets the instance's record and driver; an instance that is gone needs
// no recovery.
func onInstance(rule func(m *Manager, ctx context.Context, inst store.Instance, d hypervisor.Driver) error) func(*Manager, context.Context, store.Intent) error {
	return func(m *Manager, ctx context.Context, in store.Intent) error {
		var inst store.Instance
		if err := m.store.View(func(tx *store.Tx) (err error) { inst, err = tx.Instance(in.InstanceID); return }); err != nil {
			return nil
		}
		d, err := m.driver(inst.Spec.Hypervisor)
		if err != nil {
			return err
		}
		return rule(m, ctx, inst, d)
	}
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

// sweep removes what no record owns from the data directory's sub
// ("instances" or "snapshots"): leftovers of a snapshot restore's swap
// ("<id>.new", "<id>.old"), interrupted copies (clone temporaries), and
// directories named by an id no record has, after orphan (if set) has
// ended whatever runs them. Anything else is left alone with a warning.
func (m *Manager) sweep(sub string, known map[string]bool, orphan func(id string)) error {
	parent := filepath.Join(m.cfg.DataDir, sub)
	entries, err := os.ReadDir(parent)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if known[name] {
			continue
		}
		_, swap := swapLeftover(name)
		switch {
		case swap:
			// A snapshot restore committed, then crashed before cleanup
			// (or its instance is gone since).
			m.log.Info("reconcile: removing leftover of a snapshot restore", "dir", name)
		case clone.IsTempName(name):
			m.log.Info("reconcile: removing an interrupted copy", "dir", name)
		case !ids.Valid(name):
			m.log.Warn("reconcile: unexpected entry in the data directory, left alone", "dir", sub, "name", name)
			continue
		default:
			m.log.Info("reconcile: removing orphan directory", "dir", sub, "id", name)
			if orphan != nil {
				orphan(name)
			}
		}
		if err := os.RemoveAll(filepath.Join(parent, name)); err != nil {
			errs = append(errs, err)
		}
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
