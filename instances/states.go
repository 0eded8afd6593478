package instances

import (
	"context"
	"fmt"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/store"
)

// The state machine: the states a client sees (derived from the persisted
// power state in view.go), the legal transitions (doc.go), and bringTo,
// which walks an instance under its lock to a target state with the
// operations of start.go, stop.go and restore.go.

// State is the state a client sees (hypeman's InstanceState).
type State string

const (
	StateCreated      State = "Created"
	StateInitializing State = "Initializing"
	StateRunning      State = "Running"
	StatePaused       State = "Paused"
	StateShutdown     State = "Shutdown"
	StateStopped      State = "Stopped"
	StateStandby      State = "Standby"
	StateUnknown      State = "Unknown"
)

// ParseState checks a state name from a request.
func ParseState(s string) (State, error) {
	switch st := State(s); st {
	case StateCreated, StateInitializing, StateRunning, StatePaused, StateShutdown, StateStopped, StateStandby, StateUnknown:
		return st, nil
	}
	return "", fmt.Errorf("unknown instance state %q: %w", s, errdefs.ErrInvalidArgument)
}

// bringTo moves a Standby or Stopped instance (under its lock) to target.
func (m *Manager) bringTo(ctx context.Context, inst *store.Instance, target State) error {
	switch cur := m.view(*inst).State; {
	case cur == target:
		return nil
	case target == StateRunning && cur == StateStandby:
		return m.restore(ctx, inst)
	case target == StateRunning && cur == StateStopped:
		return m.startLocked(ctx, inst)
	case target == StateStopped:
		return m.stop(ctx, inst, true)
	default:
		return fmt.Errorf("cannot bring instance %s from %s to %s: %w", inst.Name, cur, target, errdefs.ErrInvalidState)
	}
}

// targetFor applies a snapshot kind's default target state and refuses a
// Standby target for a snapshot without memory.
func targetFor(kind SnapshotKind, target State) (State, error) {
	if target == "" {
		if kind == SnapshotStandby {
			return StateRunning, nil
		}
		return StateStopped, nil
	}
	switch target {
	case StateRunning, StateStopped:
		return target, nil
	case StateStandby:
		if kind == SnapshotStandby {
			return target, nil
		}
		return "", fmt.Errorf("a Stopped snapshot holds no memory: target state Standby is impossible: %w", errdefs.ErrInvalidArgument)
	}
	return "", fmt.Errorf("target state %q: want Running, Standby or Stopped: %w", target, errdefs.ErrInvalidArgument)
}

// invalidState is the 409 for an operation the state machine forbids.
func invalidState(op string, inst store.Instance, state State) error {
	return fmt.Errorf("cannot %s instance %s: it is %s: %w", op, inst.Name, state, errdefs.ErrInvalidState)
}
