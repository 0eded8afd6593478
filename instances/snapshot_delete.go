package instances

import (
	"context"
	"os"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/store"
)

// DeleteSnapshot removes a snapshot. Instances forked from it, and its
// source, are untouched: they own their files.
func (m *Manager) DeleteSnapshot(ctx context.Context, ref string) error {
	_, err := m.run(ctx, operation{
		name: "snapshot_delete", snapshot: ref,
		label: func(t *targets) string { return "delete snapshot " + t.snap.ID },
	}, func(t *targets) error {
		intent := store.Intent{ID: t.snap.ID, Op: store.OpSnapshotDelete, SnapshotID: t.snap.ID}
		if err := m.putIntent(intent); err != nil {
			return err
		}
		if err := os.RemoveAll(m.snapshotDir(t.snap.ID)); err != nil {
			return err
		}
		return m.store.Update(func(tx *store.Tx) error {
			if err := tx.DeleteSnapshot(t.snap.ID); err != nil {
				return err
			}
			return tx.DeleteIntent(intent.ID)
		})
	})
	return err
}

// reconcileSnapshotDelete is the crash rule of a snapshot deletion: roll
// forward, removing the directory and the record.
func (m *Manager) reconcileSnapshotDelete(ctx context.Context, in store.Intent) error {
	if err := os.RemoveAll(m.snapshotDir(in.SnapshotID)); err != nil {
		return err
	}
	return m.store.Update(func(tx *store.Tx) error {
		if err := tx.DeleteSnapshot(in.SnapshotID); err != nil && !errdefs.IsNotFound(err) {
			return err
		}
		return nil
	})
}
