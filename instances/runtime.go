package instances

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/store"
)

// Agent is what the manager needs from a guest agent connection;
// *agent.Client implements it.
type Agent interface {
	Hello() agent.Hello
	Configure(ctx context.Context, cfg agent.Config) error
	Restored(ctx context.Context, info agent.RestoreInfo) error
	Exec(ctx context.Context, req agent.ExecRequest) (int, error)
	Shutdown(ctx context.Context) error
	Close() error
	Done() <-chan struct{}
}

// AgentDialer connects to a VM's guest agent (through vm.DialAgent),
// retrying until the agent says hello or ctx ends.
type AgentDialer func(ctx context.Context, vm hypervisor.VM) (Agent, error)

// agentAttemptTimeout bounds one connection attempt to a guest agent. A
// cold boot under TCG says hello in about 5 s.
const agentAttemptTimeout = 20 * time.Second

// restoredAttemptTimeout bounds an attempt while a restore notice is
// pending: a restored guest is already up and answers within a second, so
// a silent channel is a stale link to reset at once, not a slow boot. (At
// 20 s a restored guest once ran unobserved for 17 s before its notice.)
const restoredAttemptTimeout = 5 * time.Second

// runtime is the manager's live view of one VMM: its handle, its agent
// connection and the watcher goroutine that keeps both current.
type runtime struct {
	m   *Manager
	id  string
	vm  hypervisor.VM
	log *slog.Logger

	ctx    context.Context // cancelled by detach
	cancel context.CancelFunc
	done   chan struct{} // closed when the watcher has returned

	mu     sync.Mutex // guards the fields below
	agent  Agent
	ready  bool
	paused bool
	// configure is sent when the agent reports an unconfigured boot.
	configure agent.Config
	// restored, when set, is sent once on the next connection, before the
	// instance counts as ready.
	restored *agent.RestoreInfo
	bootID   string
	// stopping: an operation is shutting the guest down; a dropped agent
	// connection is expected, not news.
	stopping bool
	// image: the guest runs an image's program, whose exit stops the
	// instance (workload.go).
	image bool
}

// attachRuntime registers vm for inst and starts its watcher.
func (m *Manager) attachRuntime(inst store.Instance, vm hypervisor.VM, restored *agent.RestoreInfo) *runtime {
	// Under the manager's closing context: Close stops every watcher, even
	// one attached after it listed the runtimes.
	ctx, cancel := context.WithCancel(m.closingCtx)
	rt := &runtime{
		m: m, id: inst.ID, vm: vm, ctx: ctx, cancel: cancel, done: make(chan struct{}),
		log: m.log.With("instance", inst.ID, "name", inst.Name),
		configure: agent.Config{
			Hostname: inst.Hostname,
			Command:  inst.Spec.Command,
			Env:      inst.Spec.Env,
			Network:  m.guestNetwork(inst),
		},
		restored: restored,
		image:    hasImage(inst.Spec),
	}
	if rt.image {
		// The image form: Command and Env are the built-in guest's.
		rt.configure.Command, rt.configure.Env = nil, nil
		rt.configure.Root, rt.configure.Process = workloadConfig(inst.Spec)
		rt.configure.Volumes = volumeConfig(inst.Spec)
	}
	m.watchers.Add(1)
	go rt.watch() // owner: the manager; detach or Close stops it
	m.setRuntime(inst.ID, rt)
	return rt
}

// dropRuntime detaches rt and forgets it: the operation that attached it
// failed before recording the VM.
func (m *Manager) dropRuntime(rt *runtime) {
	rt.detach()
	if m.runtimeOf(rt.id) == rt {
		m.setRuntime(rt.id, nil)
	}
}

// detach stops the watcher and closes the agent connection, so the VMM can
// be stopped on purpose without the watcher recording it as a crash.
func (rt *runtime) detach() {
	rt.cancel()
	<-rt.done
}

func (rt *runtime) watch() {
	defer rt.m.watchers.Done()
	defer close(rt.done)
	backoff := 50 * time.Millisecond
	for {
		ag, err := rt.connect()
		var se *startError
		if errors.As(err, &se) {
			rt.workloadEnded(se.status)
			select {
			case <-rt.vm.Exited():
				rt.m.vmExited(rt)
			case <-rt.ctx.Done():
			}
			return
		}
		if err == nil {
			if rt.image {
				rt.watchWorkload(ag)
			}
			backoff = 50 * time.Millisecond
			rt.m.notify()
			select {
			case <-ag.Done():
				rt.setAgent(nil)
				rt.mu.Lock()
				stopping := rt.stopping
				rt.mu.Unlock()
				if !stopping {
					rt.log.Warn("guest agent connection lost; reconnecting")
				}
				continue
			case <-rt.vm.Exited():
				rt.setAgent(nil)
				ag.Close()
				rt.m.vmExited(rt)
				return
			case <-rt.ctx.Done():
				rt.setAgent(nil)
				ag.Close()
				return
			}
		}
		select {
		case <-rt.vm.Exited():
			rt.m.vmExited(rt)
			return
		case <-rt.ctx.Done():
			return
		case <-time.After(backoff):
			rt.log.Warn("guest agent not reachable; retrying", "err", err)
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

// connect dials the agent (until it answers, the VMM exits or the runtime
// is detached), configures a fresh boot and delivers a pending restore
// notice; on success the instance is ready.
func (rt *runtime) connect() (Agent, error) {
	// One attempt is bounded: a connection on which no hello arrives is
	// dropped and the next attempt opens a fresh one, which makes the
	// guest reset its end of the channel.
	timeout := agentAttemptTimeout
	rt.mu.Lock()
	if rt.restored != nil {
		timeout = restoredAttemptTimeout
	}
	rt.mu.Unlock()
	ctx, cancel := context.WithTimeout(rt.ctx, timeout)
	defer cancel()
	go func() { // bounded by connect's return
		select {
		case <-rt.vm.Exited():
			cancel()
		case <-ctx.Done():
		}
	}()
	ag, err := rt.m.cfg.DialAgent(ctx, rt.vm)
	if err != nil {
		return nil, err
	}
	hello := ag.Hello()
	rt.mu.Lock()
	cfg, notice := rt.configure, rt.restored
	rt.mu.Unlock()
	if !hello.Configured {
		if err := ag.Configure(ctx, cfg); err != nil {
			ag.Close()
			return nil, workloadStartError(fmt.Errorf("configure guest: %w", err), rt.image)
		}
	}
	if notice != nil {
		n := *notice
		n.Now = time.Now() // as late as possible: the guest steps its clock to it
		if err := ag.Restored(ctx, n); err != nil {
			ag.Close()
			return nil, fmt.Errorf("tell the guest it was restored: %w", err)
		}
	}
	rt.mu.Lock()
	rt.agent, rt.ready, rt.bootID = ag, true, hello.BootID
	if rt.restored == notice {
		rt.restored = nil
	}
	rt.mu.Unlock()
	return ag, nil
}

func (rt *runtime) setAgent(ag Agent) {
	rt.mu.Lock()
	rt.agent, rt.ready = ag, ag != nil
	rt.mu.Unlock()
	rt.m.notify()
}

func (rt *runtime) setPaused(p bool) {
	rt.mu.Lock()
	rt.paused = p
	rt.mu.Unlock()
	rt.m.notify()
}

func (rt *runtime) status() (ready, paused bool) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.ready, rt.paused
}

// waitAgent returns the agent once the instance is ready.
func (rt *runtime) waitAgent(ctx context.Context) (Agent, error) {
	for {
		changed := rt.m.changes()
		rt.mu.Lock()
		ag, ready := rt.agent, rt.ready
		rt.mu.Unlock()
		if ready && ag != nil {
			return ag, nil
		}
		select {
		case <-changed:
		case <-rt.vm.Exited():
			return nil, fmt.Errorf("the VM exited: %w", errdefs.ErrUnavailable)
		case <-rt.done:
			return nil, fmt.Errorf("the instance changed state: %w", errdefs.ErrUnavailable)
		case <-ctx.Done():
			return nil, fmt.Errorf("the guest agent is not ready: %w", errors.Join(ctx.Err(), errdefs.ErrUnavailable))
		}
	}
}

// vmExited records a VMM exit nobody asked for (the guest powered off, or
// the VMM crashed). It gives up if the runtime is detached meanwhile: the
// operation that detached it owns the outcome.
func (m *Manager) vmExited(rt *runtime) {
	l := m.lockFor(rt.id)
	if err := l.lock(rt.ctx); err != nil {
		return
	}
	defer l.unlock()
	if m.runtimeOf(rt.id) != rt {
		return
	}
	var inst store.Instance
	if err := m.store.View(func(tx *store.Tx) (err error) { inst, err = tx.Instance(rt.id); return }); err != nil {
		m.setRuntime(rt.id, nil)
		return
	}
	rt.log.Warn("VMM exited unexpectedly: the guest powered off or the VMM crashed; see the console log")
	m.markStopped(&inst, "the VMM exited: the guest powered off or the VMM crashed")
	m.setRuntime(rt.id, nil)
}

// markStopped records that an instance's VMM is gone and discards its
// now-meaningless memory file.
func (m *Manager) markStopped(inst *store.Instance, msg string) error {
	if d, err := m.driver(inst.Spec.Hypervisor); err == nil {
		if err := d.DiscardSavedState(m.instanceDir(inst.ID)); err != nil {
			m.log.Error("discard memory", "instance", inst.ID, "err", err)
		}
	}
	inst.State, inst.VMM, inst.StoppedAt, inst.ExitMessage = store.Stopped, nil, timePtr(now()), msg
	inst.CacheKey, inst.MemoryShared = "", false // no memory left to share
	if err := m.putInstance(*inst); err != nil {
		m.log.Error("record stopped instance", "instance", inst.ID, "err", err)
		return fmt.Errorf("record the instance stopped: %w", err)
	}
	return nil
}
