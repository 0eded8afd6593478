package instances

import (
	"context"
	"time"

	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/store"
)

// Stop shuts a running instance down (gracefully through the guest agent,
// then hard after Config.StopTimeout), or discards a standby instance's
// saved memory. Either way it ends Stopped.
func (m *Manager) Stop(ctx context.Context, ref string) (Instance, error) {
	return m.lifecycle(ctx, ref, "stop", []State{StateRunning, StateInitializing, StatePaused, StateStandby, StateUnknown},
		func(inst *store.Instance) error { return m.stop(ctx, inst, true) })
}

// stop brings inst to Stopped under its lock. graceful asks the guest to
// power off first.
func (m *Manager) stop(ctx context.Context, inst *store.Instance, graceful bool) error {
	intent := store.Intent{ID: inst.ID, Op: store.OpStop, InstanceID: inst.ID}
	if err := m.putIntent(intent); err != nil {
		return err
	}
	if rt := m.runtimeOf(inst.ID); rt != nil {
		m.haltVM(ctx, rt, graceful)
		m.setRuntime(inst.ID, nil)
	}
	if err := m.markStopped(inst, ""); err != nil {
		return err // the intent stays: the reconcile finishes the stop
	}
	m.dropIntent(intent.ID)
	return nil
}

// haltVM ends a runtime's VMM: a guest poweroff through the agent when
// graceful (bounded by StopTimeout), then Quit.
func (m *Manager) haltVM(ctx context.Context, rt *runtime, graceful bool) {
	rt.mu.Lock()
	ag := rt.agent
	rt.stopping = true
	rt.mu.Unlock()
	if graceful && ag != nil {
		sctx, cancel := context.WithTimeout(ctx, m.cfg.StopTimeout)
		if err := ag.Shutdown(sctx); err != nil {
			rt.log.Warn("graceful shutdown failed; stopping the VMM", "err", err)
		} else {
			select {
			case <-rt.vm.Exited():
			case <-sctx.Done():
				rt.log.Warn("guest did not power off in time; stopping the VMM", "timeout", m.cfg.StopTimeout)
			}
		}
		cancel()
	}
	rt.detach()
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := rt.vm.Quit(qctx); err != nil {
		rt.log.Error("quit VMM", "err", err)
	}
}

// reconcileStop is the crash rule of a stop: roll forward.
func (m *Manager) reconcileStop(ctx context.Context, inst store.Instance, d hypervisor.Driver) error {
	m.killVMMs(ctx, inst)
	m.markStopped(&inst, "")
	return nil
}
