package instances

import (
	"context"
	"fmt"

	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/store"
)

func (m *Manager) view(inst store.Instance) Instance {
	v := instanceOf(inst)
	v.Network = m.networkOf(inst)
	switch inst.State {
	case store.Stopped:
		v.State = StateStopped
	case store.Standby:
		v.State = StateStandby
		v.HasSavedState = true
	case store.Running:
		rt := m.runtimeOf(inst.ID)
		switch {
		case rt == nil:
			v.State, v.StateError = StateUnknown, "the daemon has not yet adopted this instance's VMM"
		default:
			ready, paused := rt.status()
			switch {
			case paused:
				v.State = StatePaused
			case ready:
				v.State = StateRunning
			default:
				v.State = StateInitializing
			}
		}
	default:
		v.State, v.StateError = StateUnknown, fmt.Sprintf("unrecognised persisted state %q", inst.State)
	}
	if d, err := m.driver(inst.Spec.Hypervisor); err == nil {
		if a, ok := d.(hypervisor.AcceleratorReporter); ok {
			v.Accelerator = a.AcceleratorOf(inst.Spec.DriverState)
		}
	}
	m.viewMemory(&v, inst)
	return v
}

// ListFilter narrows List; zero fields match everything.
type ListFilter struct {
	State State
	Tags  map[string]string
}

// List returns the instances matching f, oldest first.
func (m *Manager) List(ctx context.Context, f ListFilter) ([]Instance, error) {
	var recs []store.Instance
	if err := m.store.View(func(tx *store.Tx) (err error) { recs, err = tx.Instances(); return }); err != nil {
		return nil, err
	}
	out := []Instance{}
	for _, r := range recs {
		v := m.view(r)
		if f.State != "" && v.State != f.State {
			continue
		}
		if !tagsMatch(r.Tags, f.Tags) {
			continue
		}
		out = append(out, v)
	}
	return out, nil
}

func tagsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Get resolves ref (id, name or unique id prefix).
func (m *Manager) Get(ctx context.Context, ref string) (Instance, error) {
	var inst store.Instance
	if err := m.store.View(func(tx *store.Tx) (err error) { inst, err = tx.ResolveInstance(ref); return }); err != nil {
		return Instance{}, err
	}
	return m.view(inst), nil
}
