package instances

import (
	"context"
	"fmt"

	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/store"
)

// boot starts a VMM that boots inst from scratch and fills in what the
// boot decided (driver state, process identity, timestamps).
func (m *Manager) boot(ctx context.Context, inst *store.Instance) (hypervisor.VM, error) {
	d, err := m.driver(inst.Spec.Hypervisor)
	if err != nil {
		return nil, err
	}
	// A first boot needs the shared kernel and initramfs; later boots use
	// the instance's own copies, so a missing asset cache is only an error
	// if the driver needed it.
	assets, assetErr := m.cfg.Assets(ctx)
	spec, launched, err := m.withNIC(ctx, *inst, m.specOf(*inst))
	if err != nil {
		return nil, err
	}
	vm, driverState, err := d.Boot(ctx, spec, assets)
	launched()
	if err != nil {
		if assetErr != nil {
			return nil, fmt.Errorf("%w (guest assets: %w)", err, assetErr)
		}
		return nil, err
	}
	inst.Spec.DriverState = driverState
	inst.State, inst.VMM = store.Running, vmmRecord(vm)
	inst.StartedAt, inst.StoppedAt = timePtr(now()), nil
	inst.CacheKey, inst.BootID, inst.ExitCode, inst.ExitMessage = "", "", nil, ""
	return vm, nil
}

// Start boots a stopped instance.
func (m *Manager) Start(ctx context.Context, ref string) (Instance, error) {
	return m.lifecycle(ctx, ref, "start", []State{StateStopped}, func(inst *store.Instance) error {
		return m.startLocked(ctx, inst)
	})
}

// startLocked boots a stopped instance under its lock.
func (m *Manager) startLocked(ctx context.Context, inst *store.Instance) error {
	intent := store.Intent{ID: inst.ID, Op: store.OpStart, InstanceID: inst.ID}
	if err := m.putIntent(intent); err != nil {
		return err
	}
	vm, err := m.boot(ctx, inst)
	if err != nil {
		m.dropIntent(intent.ID)
		return err
	}
	// Attached before the commit: a Running record always has its handle.
	rt := m.attachRuntime(*inst, vm, nil)
	if err := m.commit(*inst, intent.ID); err != nil {
		m.dropRuntime(rt)
		vm.Quit(ctx)
		m.dropIntent(intent.ID)
		return err
	}
	return nil
}

// reconcileStart is the crash rule of a start: a live VMM is adopted
// (Running); otherwise the instance stays Stopped.
func (m *Manager) reconcileStart(ctx context.Context, inst store.Instance, d hypervisor.Driver) error {
	if vm := m.adoptAny(ctx, inst); vm != nil {
		inst.State, inst.VMM, inst.StartedAt = store.Running, vmmRecord(vm), timePtr(now())
		if err := m.putInstance(inst); err != nil {
			return err
		}
		m.attachRuntime(inst, vm, nil)
	}
	return nil
}
