package instances

import (
	"context"
	"fmt"

	"github.com/zygote/zygote/internal/ids"
	"github.com/zygote/zygote/store"
)

// park puts a running instance in standby for a copy and returns the
// function that restores it. An OpResume intent covers the time between:
// after a crash the reconcile restores the source. The copy has been made
// when resume runs, so a failure to restore the source does not fail the
// call: it is logged, the intent stays, and the next daemon start (or the
// user) restores the source. Fork and CreateSnapshot park a running source.
func (m *Manager) park(ctx context.Context, inst *store.Instance) (resume func(), err error) {
	intent := store.Intent{ID: ids.New(), Op: store.OpResume, InstanceID: inst.ID}
	if err := m.putIntent(intent); err != nil {
		return nil, err
	}
	if _, err := m.standby(ctx, inst, false); err != nil {
		m.dropIntent(intent.ID)
		return nil, fmt.Errorf("park the source: %w", err)
	}
	return func() {
		if err := m.restore(context.WithoutCancel(ctx), inst); err != nil {
			m.log.Error("restore the source after the copy; it stays parked until restored", "instance", inst.ID, "name", inst.Name, "err", err)
			return
		}
		m.dropIntent(intent.ID)
	}, nil
}

// reconcileResume is the crash rule of a park: the source was Running
// before the operation and must be again, once the reconcile has settled
// every record and VMM (resumeAfterReconcile).
func (m *Manager) reconcileResume(ctx context.Context, in store.Intent) error {
	m.mu.Lock()
	m.resumeQueue = append(m.resumeQueue, in.InstanceID)
	m.mu.Unlock()
	return nil
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
		inst, unlock, err := m.lockInstance(ctx, id)
		if err != nil {
			return
		}
		defer unlock()
		if m.view(inst).State != StateStandby {
			return
		}
		m.log.Info("reconcile: restoring a source parked by an interrupted fork or snapshot", "instance", id, "name", inst.Name)
		if err := m.restore(ctx, &inst); err != nil {
			m.log.Error("reconcile: restore the parked source", "instance", id, "err", err)
		}
	}()
}
