package instances

import (
	"context"
	"fmt"

	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/internal/cleanup"
	"github.com/zygote/zygote/internal/crashpoint"
	"github.com/zygote/zygote/internal/ids"
	"github.com/zygote/zygote/store"
)

// Standby parks a running instance: its memory stays in its memory file,
// its device state is saved beside it, and its VMM exits. The VM then costs
// no CPU and no RAM, only disk.
func (m *Manager) Standby(ctx context.Context, ref string) (Instance, error) {
	return m.lifecycle(ctx, ref, "standby", []State{StateRunning}, func(inst *store.Instance) error {
		_, err := m.standby(ctx, inst, true)
		return err
	})
}

// standby runs under inst's lock. The order matters:
//  1. detach the watcher and close the agent connection, so exec sessions
//     end with an error instead of hanging on a VM that stops answering;
//  2. pause the vCPUs: memory stops changing;
//  3. save the device state; the driver fsyncs state and memory and only
//     then publishes the state file (rename), so a crash leaves either a
//     complete standby image or none;
//  4. stop the VMM;
//  5. commit Standby with a fresh cache key: the memory file's content is
//     final now, and differs from whatever any earlier key named.
//
// Until step 3 succeeds a failure resumes the VM and it stays Running.
//
// densify asks for the background rewrite of a fragmented memory file
// (densify.go); a park for a copy skips it: the source runs again at once.
func (m *Manager) standby(ctx context.Context, inst *store.Instance, densify bool) (hypervisor.SaveStats, error) {
	rt := m.runtimeOf(inst.ID)
	if rt == nil {
		return hypervisor.SaveStats{}, invalidState("standby", *inst, StateUnknown)
	}
	intent := store.Intent{ID: inst.ID, Op: store.OpStandby, InstanceID: inst.ID}
	if err := m.putIntent(intent); err != nil {
		return hypervisor.SaveStats{}, err
	}
	undo := cleanup.New()
	defer undo.Run(ctx)
	undo.Add("drop standby intent", func(context.Context) error { m.dropIntent(intent.ID); return nil })
	rt.detach()
	rt.setPaused(true)
	undo.Add("put the VM back in service", func(ctx context.Context) error {
		m.recoverRunning(ctx, inst, rt, "standby")
		return nil
	})
	stats, err := m.pauseAndSave(ctx, rt.vm)
	if err != nil {
		return stats, err
	}
	// The state file is published: from here on a crash or a failure
	// commits Standby (the reconcile's rule), never a resume.
	undo.Release()
	crashpoint.Hit(crashpoint.StandbySaved)
	if err := rt.vm.Quit(ctx); err != nil {
		rt.log.Warn("quit VMM after saving state", "err", err)
	}
	m.setRuntime(inst.ID, nil)
	inst.State, inst.VMM, inst.CacheKey = store.Standby, nil, ids.New()
	if err := m.commit(*inst, intent.ID); err != nil {
		// The files form a complete standby image; the reconcile's rule for
		// a standby intent with a state file commits it at next start.
		return stats, err
	}
	m.metrics.standbyStateBytes.Observe(float64(stats.StateBytes))
	if densify {
		m.densifyLater(*inst)
	}
	rt.log.Info("instance parked", "state_bytes", stats.StateBytes, "save", stats.Duration)
	return stats, nil
}

func (m *Manager) pauseAndSave(ctx context.Context, vm hypervisor.VM) (hypervisor.SaveStats, error) {
	if err := vm.Pause(ctx); err != nil {
		return hypervisor.SaveStats{}, fmt.Errorf("pause: %w", err)
	}
	stats, err := vm.SaveState(ctx)
	if err != nil {
		return stats, fmt.Errorf("save state: %w", err)
	}
	return stats, nil
}

// recoverRunning puts a VM whose standby (or snapshot) failed back in
// service, or records it Stopped if its VMM died meanwhile.
func (m *Manager) recoverRunning(ctx context.Context, inst *store.Instance, rt *runtime, op string) {
	select {
	case <-rt.vm.Exited():
		m.setRuntime(inst.ID, nil)
		m.markStopped(inst, fmt.Sprintf("the VMM exited during %s", op))
		return
	default:
	}
	if err := rt.vm.Resume(context.WithoutCancel(ctx)); err != nil {
		rt.log.Error("resume after failed "+op, "err", err)
	}
	m.attachRuntime(*inst, rt.vm, nil)
}

// reconcileStandby is the crash rule of a standby: a published state file
// is a complete standby image, committed Standby (any VMM killed); else a
// live VMM is resumed (Running); else the instance is Stopped.
func (m *Manager) reconcileStandby(ctx context.Context, inst store.Instance, d hypervisor.Driver) error {
	if d.HasSavedState(m.instanceDir(inst.ID)) {
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
	return nil
}
