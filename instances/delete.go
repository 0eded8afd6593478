package instances

import (
	"context"
	"fmt"
	"os"

	"github.com/zygote/zygote/store"
)

// Delete removes an instance in any state: it stops the VM first
// (gracefully unless force), then removes its directory and its record.
func (m *Manager) Delete(ctx context.Context, ref string, force bool) error {
	leave, err := m.enter()
	if err != nil {
		return err
	}
	defer leave()
	inst, unlock, err := m.lockInstance(ctx, ref)
	if err != nil {
		return err
	}
	defer unlock()
	done := m.metrics.op("delete")
	err = m.delete(ctx, inst, force)
	done(err)
	if err != nil {
		return fmt.Errorf("delete %s: %w", inst.Name, err)
	}
	m.log.Info("instance deleted", "instance", inst.ID, "name", inst.Name)
	return nil
}

// delete runs under inst's lock. The intent makes a crash roll forward:
// whatever was reached, the reconcile finishes the deletion.
func (m *Manager) delete(ctx context.Context, inst store.Instance, force bool) error {
	intent := store.Intent{ID: inst.ID, Op: store.OpDelete, InstanceID: inst.ID}
	if err := m.putIntent(intent); err != nil {
		return err
	}
	if rt := m.runtimeOf(inst.ID); rt != nil {
		m.haltVM(ctx, rt, !force)
		m.setRuntime(inst.ID, nil)
	}
	if err := os.RemoveAll(m.instanceDir(inst.ID)); err != nil {
		return fmt.Errorf("remove instance directory: %w", err)
	}
	err := m.store.Update(func(tx *store.Tx) error {
		if err := tx.DeleteInstance(inst.ID); err != nil {
			return err
		}
		return tx.DeleteIntent(intent.ID)
	})
	if err == nil {
		// The lock entry goes too (the map would grow with every sandbox
		// ever run); whoever still waits on it re-reads and finds nothing.
		m.mu.Lock()
		delete(m.locks, inst.ID)
		m.mu.Unlock()
	}
	m.notify()
	return err
}
