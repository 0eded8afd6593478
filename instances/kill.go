package instances

import (
	"context"
	"fmt"
)

// Kill hard-stops running instances that cannot continue (their pager
// died: a vCPU touching a missing page would hang forever) and records
// why. Unknown ids and instances that are not running are skipped.
func (m *Manager) Kill(ctx context.Context, ids []string, reason string) {
	for _, id := range ids {
		m.run(ctx, operation{name: "kill", instance: id}, func(t *targets) error {
			rt := m.runtimeOf(t.inst.ID)
			if rt == nil {
				return nil
			}
			m.log.Error("killing instance", "instance", t.inst.ID, "name", t.inst.Name, "reason", reason)
			m.haltVM(ctx, rt, false)
			m.setRuntime(t.inst.ID, nil)
			return m.markStopped(&t.inst, fmt.Sprintf("killed: %s", reason))
		})
	}
}
