package instances

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/store"
)

// ExecTarget checks that ref names an instance exec can reach (Running, or
// Initializing and about to be) and returns it, so the API can refuse
// before upgrading the connection.
func (m *Manager) ExecTarget(ctx context.Context, ref string) (Instance, error) {
	v, err := m.Get(ctx, ref)
	if err != nil {
		return v, err
	}
	switch v.State {
	case StateRunning, StateInitializing:
		return v, nil
	}
	return v, errNotRunnable(v.Instance, v.State)
}

// Exec runs a command in the guest and returns its exit code. It waits up
// to waitForAgent for a booting guest's agent. A standby, stop or delete
// of the instance ends it with an error.
func (m *Manager) Exec(ctx context.Context, ref string, req agent.ExecRequest, waitForAgent time.Duration) (int, error) {
	v, err := m.ExecTarget(ctx, ref)
	if err != nil {
		return -1, err
	}
	rt := m.runtimeOf(v.ID)
	if rt == nil {
		return -1, errNotRunnable(v.Instance, StateUnknown)
	}
	wctx, cancel := context.WithTimeout(ctx, max(waitForAgent, time.Millisecond))
	ag, err := rt.waitAgent(wctx)
	cancel()
	if err != nil {
		return -1, err
	}
	return ag.Exec(ctx, req)
}

// LogPath returns the path of an instance's log: source "app" is the guest
// console, "vmm" the VMM's own output.
func (m *Manager) LogPath(ctx context.Context, ref, source string) (Instance, string, error) {
	v, err := m.Get(ctx, ref)
	if err != nil {
		return v, "", err
	}
	switch source {
	case "app":
		return v, filepath.Join(m.instanceDir(v.ID), hypervisor.ConsoleLog), nil
	case "vmm":
		return v, filepath.Join(m.instanceDir(v.ID), hypervisor.VMMLog), nil
	}
	return v, "", fmt.Errorf("log source %q: want app or vmm: %w", source, errdefs.ErrInvalidArgument)
}

// WaitResult is the outcome of Wait.
type WaitResult struct {
	State      State
	StateError string
	TimedOut   bool
}

// Wait blocks until the instance reaches target, cannot reach it without
// an explicit action (Stopped, Standby, Unknown), or timeout passes.
func (m *Manager) Wait(ctx context.Context, ref string, target State, timeout time.Duration) (WaitResult, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		changed := m.changes()
		var inst store.Instance
		err := m.store.View(func(tx *store.Tx) (err error) { inst, err = tx.ResolveInstance(ref); return })
		if err != nil {
			return WaitResult{}, err
		}
		v := m.view(inst)
		res := WaitResult{State: v.State, StateError: v.StateError}
		if v.State == target || stuck(v.State, target) {
			return res, nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			res.TimedOut = true
			return res, nil
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}
}

// stuck reports whether state cannot become target without a request.
func stuck(state, target State) bool {
	switch state {
	case StateUnknown:
		return true
	case StateStopped, StateStandby:
		return state != target
	}
	return false
}

// errNotRunnable is returned when exec targets an instance without a VMM.
func errNotRunnable(inst store.Instance, state State) error {
	return fmt.Errorf("instance %s is %s, not Running: %w", inst.Name, state, errdefs.ErrInvalidState)
}
