package instances

import (
	"context"
	"syscall"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/internal/proc"
	"github.com/zygote/zygote/store"
)

// Adoption: finding the VMMs an earlier daemon left running, attaching to
// the ones a record owns and ending the others. Used by the reconcile and
// by the crash rules of the operations.

// adoptAny attaches to the instance's live VMM: the recorded one, else any
// process the driver recognises as running this instance's directory. A
// VMM it cannot attach to after a few tries (a wedged monitor) is killed,
// so a nil result always means no VMM runs this directory: the caller may
// then record the instance Stopped and discard its memory without
// stranding a live guest.
func (m *Manager) adoptAny(ctx context.Context, inst store.Instance) hypervisor.VM {
	d, err := m.driver(inst.Spec.Hypervisor)
	if err != nil {
		return nil
	}
	spec := m.adoptSpec(inst)
	var cands []hypervisor.Process
	if inst.VMM != nil {
		cands = append(cands, hypervisor.Process{PID: inst.VMM.PID, StartTime: inst.VMM.StartTime})
	}
	found, _ := d.Find(spec)
	cands = append(cands, found...)
	for _, p := range cands {
		for attempt := 1; attempt <= 3; attempt++ {
			vm, err := d.Attach(ctx, spec, p)
			if err == nil {
				// Any other VMM for this directory is a leftover.
				for _, other := range found {
					if other != p {
						m.killVMM(ctx, d, spec, other)
					}
				}
				return vm
			}
			m.log.Warn("reconcile: cannot attach to the VMM", "instance", inst.ID, "pid", p.PID, "attempt", attempt, "err", err)
			if errdefs.IsNotFound(err) {
				break // gone, or not this instance's
			}
		}
	}
	m.killVMMs(ctx, inst)
	return nil
}

// killVMMs ends every VMM running inst's directory.
func (m *Manager) killVMMs(ctx context.Context, inst store.Instance) {
	spec := m.specOf(inst)
	for _, d := range m.drivers {
		found, _ := d.Find(spec)
		for _, p := range found {
			m.log.Info("reconcile: killing leftover VMM", "instance", inst.ID, "pid", p.PID)
			m.killVMM(ctx, d, spec, p)
		}
	}
}

// killVMM ends a VMM through its driver (which may flush and exit
// cleanly), or with SIGKILL when the driver cannot attach to it.
func (m *Manager) killVMM(ctx context.Context, d hypervisor.Driver, spec hypervisor.Spec, p hypervisor.Process) {
	if vm, err := d.Attach(ctx, spec, p); err == nil {
		vm.Quit(ctx)
		return
	}
	h, err := proc.Open(p.PID, p.StartTime)
	if err != nil {
		return
	}
	defer h.Close()
	h.Signal(syscall.SIGKILL)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	h.Wait(wctx)
}
