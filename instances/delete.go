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
	_, err := m.run(ctx, operation{name: "delete", instance: ref}, func(t *targets) error {
		if err := m.delete(ctx, t.inst, force); err != nil {
			return err
		}
		m.log.Info("instance deleted", "instance", t.inst.ID, "name", t.inst.Name)
		return nil
	})
	return err
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
	// The VMM is gone: nothing uses the TAP. A failed release keeps the
	// intent: the reconcile finishes the delete.
	if err := m.releaseSlot(ctx, inst.ID); err != nil {
		return err
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

// reconcileDelete is the crash rule of a delete: roll forward, whatever
// was reached.
func (m *Manager) reconcileDelete(ctx context.Context, in store.Intent) error {
	var inst store.Instance
	err := m.store.View(func(tx *store.Tx) (err error) { inst, err = tx.Instance(in.InstanceID); return })
	exists := err == nil
	if !exists {
		inst = store.Instance{ID: in.InstanceID} // its VMM is found by its directory
	}
	m.killVMMs(ctx, inst)
	if err := m.releaseSlot(ctx, in.InstanceID); err != nil {
		return err
	}
	if err := os.RemoveAll(m.instanceDir(in.InstanceID)); err != nil {
		return err
	}
	if exists {
		return m.store.Update(func(tx *store.Tx) error { return tx.DeleteInstance(inst.ID) })
	}
	return nil
}
