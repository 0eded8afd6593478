package instances

import (
	"context"
	"fmt"
)

// Kill hard-stops running instances that cannot continue (their pager
// died: a vCPU touching a missing page would hang forever) and records
// why. Unknown ids and instances that are not running are skipped.
func (m *Manager) Kill(ctx context.Context, ids []string, reason string) {
	leave, err := m.enter()
	if err != nil {
		return
	}
	defer leave()
	for _, id := range ids {
		inst, unlock, err := m.lockInstance(ctx, id)
		if err != nil {
			continue
		}
		if rt := m.runtimeOf(inst.ID); rt != nil {
			m.log.Error("killing instance", "instance", inst.ID, "name", inst.Name, "reason", reason)
			m.haltVM(ctx, rt, false)
			m.setRuntime(inst.ID, nil)
			m.markStopped(&inst, fmt.Sprintf("killed: %s", reason))
		}
		unlock()
	}
}
