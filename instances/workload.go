package instances

import (
	"context"
	"errors"
	"fmt"

	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/guest/agentproto"
	"github.com/zygote/zygote/store"
)

// An image instance's program (hypeman's semantics): its stdout and
// stderr go to the instance's app log (the guest console), and its exit —
// or its failure to start (127 not found, 126 not executable) — records
// exit_code and exit_message and stops the instance: the guest is shut
// down, the overlay disk kept, the state Stopped. A start runs it again.

// workloadWaiter is the optional part of Agent that reports the
// program's exit; *agent.Client implements it.
type workloadWaiter interface {
	WaitWorkload(ctx context.Context) (agentproto.ExitStatus, error)
}

// startError is a Configure that failed because the program could not
// start: the guest is up, the program is not, and it never will be.
type startError struct {
	status agentproto.ExitStatus
	err    error
}

func (e *startError) Error() string { return e.err.Error() }
func (e *startError) Unwrap() error { return e.err }

// workloadStartError classes a failed Configure: a program that cannot
// start (127/126) ends the boot; so does, for an image instance, any
// refusal by the guest (its root or a volume cannot be assembled: retrying
// the same request would fail the same way), with no exit code.
func workloadStartError(err error, image bool) error {
	var re *agent.RemoteError
	if !errors.As(err, &re) {
		return err
	}
	if re.ExitCode != 0 {
		return &startError{status: agentproto.ExitStatus{Code: re.ExitCode, StartError: re.Message}, err: err}
	}
	if image {
		return &startError{status: agentproto.ExitStatus{StartError: re.Message}, err: err}
	}
	return err
}

// exitMessage is hypeman's exit_message for a status.
func exitMessage(st agentproto.ExitStatus) string {
	switch {
	case st.StartError != "" && st.Code == 0:
		return "the guest could not set up the program: " + st.StartError
	case st.StartError != "":
		return fmt.Sprintf("the program could not start (exit code %d): %s", st.Code, st.StartError)
	case st.Signal != "":
		return fmt.Sprintf("killed by signal %d (%s)", st.Code-128, st.Signal)
	}
	return fmt.Sprintf("exited with code %d", st.Code)
}

// watchWorkload waits, for one agent connection, for the program's exit.
// The goroutine ends with the connection or the runtime.
func (rt *runtime) watchWorkload(ag Agent) {
	w, ok := ag.(workloadWaiter)
	if !ok {
		return
	}
	rt.m.watchers.Add(1)
	go func() { // owner: the runtime; detach or a closed connection ends it
		defer rt.m.watchers.Done()
		st, err := w.WaitWorkload(rt.ctx)
		if err != nil {
			return // the connection ended (a reconnect asks again) or this boot has no program
		}
		rt.workloadEnded(st)
	}()
}

// workloadEnded records the program's exit and stops the instance, in a
// goroutine of its own: stopping detaches the runtime, which waits for
// the watcher that may be the caller.
func (rt *runtime) workloadEnded(st agentproto.ExitStatus) {
	rt.m.watchers.Add(1)
	go func() { // owner: the manager
		defer rt.m.watchers.Done()
		rt.m.workloadExited(rt, st)
	}()
}

func (m *Manager) workloadExited(rt *runtime, st agentproto.ExitStatus) {
	l := m.lockFor(rt.id)
	if err := l.lock(rt.ctx); err != nil {
		return // detached: an operation owns the instance now
	}
	defer l.unlock()
	if m.runtimeOf(rt.id) != rt {
		return
	}
	var inst store.Instance
	if err := m.store.View(func(tx *store.Tx) (err error) { inst, err = tx.Instance(rt.id); return }); err != nil {
		return
	}
	msg := exitMessage(st)
	rt.log.Info("the program ended; stopping the instance", "exit_code", st.Code, "exit_message", msg)
	ctx := context.WithoutCancel(rt.ctx)
	intent := store.Intent{ID: inst.ID, Op: store.OpStop, InstanceID: inst.ID}
	if err := m.putIntent(intent); err != nil {
		rt.log.Error("record the program's exit", "err", err)
		return
	}
	m.haltVM(ctx, rt, true)
	if code := st.Code; code != 0 || st.StartError == "" {
		inst.ExitCode = &code
	}
	// Recorded Stopped before the runtime goes, so a waiter never sees
	// the Unknown of a Running record without a VMM in between.
	err := m.markStopped(&inst, msg)
	m.setRuntime(inst.ID, nil)
	if err != nil {
		return // the intent stays: the reconcile finishes the stop
	}
	m.dropIntent(intent.ID)
}
