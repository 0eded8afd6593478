package instances

import (
	"context"
	"fmt"
	"slices"

	"github.com/zygote/zygote/store"
)

// operation describes one call of the manager's API for the runner (run):
// what it locks, from which states it may run, and how it is named in
// metrics and errors. Every operation — create, start, stop, standby,
// restore, delete, fork, snapshot create/restore/delete — goes through
// run, so admission, locking, state checks, metrics and error wrapping
// are written once.
type operation struct {
	// name labels the metrics and prefixes errors ("standby").
	name string
	// validate checks the request before any lock is taken (its error is
	// returned as is).
	validate func() error
	// instance and snapshot are the refs to resolve and lock, in that
	// order (lock order: doc.go); "" locks none.
	instance, snapshot string
	// beforeSnapshot runs between the two locks (a check that must not
	// wait for the snapshot's lock).
	beforeSnapshot func(*targets) error
	// from lists the states the instance may be in; nil allows any.
	from []State
	// check runs under the locks, after from, before the metrics: the
	// rules that need the records. Its error is returned as is.
	check func(*targets) error
	// label names the operation in a failure ("fork snapshot <id>");
	// default: name and the instance's name.
	label func(*targets) string
}

// targets are the locked records an operation runs on.
type targets struct {
	inst  store.Instance
	state State // inst's state when locked
	snap  store.Snapshot
}

// run admits an operation (enter), validates it, takes its locks and
// re-reads its records under them, checks the states it may run from (409
// otherwise), and runs body timed in the metrics, its error wrapped with
// the operation's label. The targets are nil unless body ran.
func (m *Manager) run(ctx context.Context, op operation, body func(*targets) error) (*targets, error) {
	leave, err := m.enter()
	if err != nil {
		return nil, err
	}
	defer leave()
	if op.validate != nil {
		if err := op.validate(); err != nil {
			return nil, err
		}
	}
	t := &targets{}
	if op.instance != "" {
		inst, unlock, err := m.lockInstance(ctx, op.instance)
		if err != nil {
			return nil, err
		}
		defer unlock()
		t.inst, t.state = inst, m.view(inst).State
	}
	if op.beforeSnapshot != nil {
		if err := op.beforeSnapshot(t); err != nil {
			return nil, err
		}
	}
	if op.snapshot != "" {
		snap, unlock, err := m.lockSnapshot(ctx, op.snapshot)
		if err != nil {
			return nil, err
		}
		defer unlock()
		t.snap = snap
	}
	if op.from != nil && !slices.Contains(op.from, t.state) {
		return nil, invalidState(op.name, t.inst, t.state)
	}
	if op.check != nil {
		if err := op.check(t); err != nil {
			return nil, err
		}
	}
	done := m.metrics.op(op.name)
	err = body(t)
	done(err)
	if err != nil {
		label := op.name + " " + t.inst.Name
		if op.label != nil {
			label = op.label(t)
		}
		return t, fmt.Errorf("%s: %w", label, err)
	}
	return t, nil
}

// lifecycle runs an operation on one instance that returns its view:
// start, stop, standby, restore.
func (m *Manager) lifecycle(ctx context.Context, ref, op string, from []State, body func(*store.Instance) error) (Instance, error) {
	t, err := m.run(ctx, operation{name: op, instance: ref, from: from}, func(t *targets) error { return body(&t.inst) })
	if t == nil {
		return Instance{}, err
	}
	return m.view(t.inst), err
}

// lockInstance resolves ref, takes the instance's lock and re-reads the
// record under it.
func (m *Manager) lockInstance(ctx context.Context, ref string) (store.Instance, func(), error) {
	var inst store.Instance
	if err := m.store.View(func(tx *store.Tx) (err error) { inst, err = tx.ResolveInstance(ref); return }); err != nil {
		return inst, nil, err
	}
	l := m.lockFor(inst.ID)
	if err := l.lock(ctx); err != nil {
		return inst, nil, fmt.Errorf("instance %s: %w", inst.Name, err)
	}
	err := m.store.View(func(tx *store.Tx) (err error) { inst, err = tx.Instance(inst.ID); return })
	if err != nil {
		l.unlock()
		return inst, nil, err
	}
	return inst, l.unlock, nil
}

// lockSnapshot resolves and locks a snapshot; forks from it and its
// deletion exclude each other.
func (m *Manager) lockSnapshot(ctx context.Context, ref string) (store.Snapshot, func(), error) {
	snap, err := m.findSnapshot(ref)
	if err != nil {
		return snap, nil, err
	}
	l := m.lockFor(snap.ID)
	if err := l.lock(ctx); err != nil {
		return snap, nil, err
	}
	if err := m.store.View(func(tx *store.Tx) (err error) { snap, err = tx.Snapshot(snap.ID); return }); err != nil {
		l.unlock()
		return snap, nil, err
	}
	return snap, l.unlock, nil
}
