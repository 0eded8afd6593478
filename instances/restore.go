package instances

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/internal/crashpoint"
	"github.com/zygote/zygote/internal/ids"
	"github.com/zygote/zygote/store"
)

// Restore resumes a standby instance where it stopped. It returns once the
// guest agent has answered and has been told about the restore (clock
// step, fresh entropy, and a new identity for a fork's first restore).
func (m *Manager) Restore(ctx context.Context, ref string) (Instance, error) {
	return m.lifecycle(ctx, ref, "restore", []State{StateStandby}, func(inst *store.Instance) error {
		return m.restore(ctx, inst)
	})
}

// restore runs under inst's lock. A failure to load the saved state leaves
// the instance Standby with every file in place: the user may retry, or
// stop it to discard the image.
func (m *Manager) restore(ctx context.Context, inst *store.Instance) error {
	d, err := m.driver(inst.Spec.Hypervisor)
	if err != nil {
		return err
	}
	intent := store.Intent{ID: inst.ID, Op: store.OpRestore, InstanceID: inst.ID}
	if err := m.putIntent(intent); err != nil {
		return err
	}
	// An owning instance may hold a link shared with sharing forks (it was
	// parked when they were forked): it breaks it before its restore maps
	// the file writable (sharing.go).
	if err := m.ownMemory(ctx, *inst); err != nil {
		m.dropIntent(intent.ID)
		return err
	}
	crashpoint.Hit(crashpoint.RestoreOwned)
	spec, launched, err := m.withNIC(ctx, *inst, m.specOf(*inst))
	if err != nil {
		m.dropIntent(intent.ID)
		return err
	}
	vm, err := d.Restore(ctx, spec)
	launched()
	if err != nil {
		m.dropIntent(intent.ID)
		return err
	}
	crashpoint.Hit(crashpoint.RestoreLoaded)
	inst.State, inst.VMM, inst.CacheKey = store.Running, vmmRecord(vm), ""
	inst.RestorePending = true
	// The runtime is attached before the commit, so no client ever sees a
	// Running record without its VMM handle (Unknown).
	rt := m.attachRuntime(*inst, vm, restoreNotice(*inst))
	if err := m.commit(*inst, intent.ID); err != nil {
		// The state file is consumed and the guest has run: the image is
		// gone. The intent stays, so the reconcile records what remains.
		m.dropRuntime(rt)
		vm.Quit(context.WithoutCancel(ctx))
		return fmt.Errorf("record the restore: %w", err)
	}
	return m.awaitRestored(ctx, inst, rt)
}

// restoreNotice is what the guest is told after a restore: fresh entropy,
// the host's time (filled in at send time), and, for a fork's first
// restore, its new hostname.
func restoreNotice(inst store.Instance) *agent.RestoreInfo {
	notice := &agent.RestoreInfo{Entropy: randomBytes(64)}
	if inst.NewIdentity {
		notice.Hostname = inst.Hostname
	}
	return notice
}

// awaitRestored waits until the watcher has delivered the restore notice,
// then records that (and that a fork's new identity is applied).
func (m *Manager) awaitRestored(ctx context.Context, inst *store.Instance, rt *runtime) error {
	wctx, cancel := context.WithTimeout(ctx, m.cfg.ReadyTimeout)
	defer cancel()
	if _, err := rt.waitAgent(wctx); err != nil {
		return fmt.Errorf("restored, but the guest agent did not answer: %w", err)
	}
	inst.NewIdentity, inst.RestorePending = false, false
	return m.putInstance(*inst)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails on Linux
	return b
}

// reconcileRestore is the crash rule of a restore: a state file still
// there means the restore never loaded it (stay Standby, kill any VMM;
// a link broken meanwhile left an own, identical memory file, or the
// link, plus at most a temporary the sweep removes);
// else a live VMM is adopted (Running, the guest told of the restore);
// else the instance is Stopped.
func (m *Manager) reconcileRestore(ctx context.Context, inst store.Instance, d hypervisor.Driver) error {
	if d.HasSavedState(m.instanceDir(inst.ID)) {
		m.killVMMs(ctx, inst)
		// The interrupted restore may have written the state's own pages
		// (a sharing VM's) into the owned memory file: the image restores
		// the same, but the file's bytes changed, so its key does too.
		inst.CacheKey = ids.New()
		return m.putInstance(inst)
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
	return nil
}
