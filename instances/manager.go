package instances

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/store"
)

// Config wires a Manager.
type Config struct {
	// DataDir holds instances/<id>/ and snapshots/<id>/.
	DataDir string
	Store   *store.Store
	// Drivers by hypervisor name; DefaultHypervisor picks one for requests
	// that do not.
	Drivers           []hypervisor.Driver
	DefaultHypervisor string
	// Assets resolves the guest kernel and initramfs for first boots.
	Assets func(ctx context.Context) (hypervisor.BootAssets, error)
	// DialAgent connects to a VM's guest agent.
	DialAgent AgentDialer
	// Clone copies directory trees reflink-first (snapshots, forks) and
	// densifies memory files, all with the daemon's clone options.
	Clone Cloner
	// StopTimeout bounds a graceful guest shutdown before the VMM is
	// killed (default 20 s).
	StopTimeout time.Duration
	// ReadyTimeout bounds how long an operation that needs the guest agent
	// (restore, a fork to Running) waits for it (default 60 s).
	ReadyTimeout time.Duration
	// NoDensify turns off the background rewrite of fragmented memory
	// files after standby (densify.go): fork chains then slow down with
	// every generation, and disk use stays lower.
	NoDensify bool
	// MaxSessions bounds the exec and cp sessions open at once per
	// instance (sessions.go; default DefaultMaxSessions).
	MaxSessions int
	// ForkMemory is the memory mode of a fork that names none (default
	// MemoryOwned; sharing.go).
	ForkMemory MemoryMode
	// Images resolves and pulls OCI images for creates that name one
	// (disks.go); nil: no image support (such a create is 501).
	Images ImageSource
	// Volumes keeps volumes (volumes.go); nil: no volume support.
	Volumes VolumeStore
	// Network gives instances their network slots (network.go); nil:
	// networking is off and instances have no NIC.
	Network Networker
	// NetworkDNS are the guests' DNS servers (their /etc/resolv.conf).
	NetworkDNS []string
	Metrics    *Metrics
	Logger     *slog.Logger
}

// Manager runs instances. It is safe for concurrent use.
type Manager struct {
	cfg     Config
	store   *store.Store
	drivers map[string]hypervisor.Driver
	log     *slog.Logger
	metrics *Metrics

	mu       sync.Mutex               // guards the fields below; a leaf lock
	locks    map[string]*instanceLock // by instance id
	runtimes map[string]*runtime      // by instance id, for instances with a VMM
	reserved map[string]bool          // names of instances being created
	changed  chan struct{}            // closed and replaced on every change
	closed   bool
	// resumeQueue holds sources to restore once Reconcile has settled
	// everything else.
	resumeQueue []string

	watchers sync.WaitGroup // runtime watchers and background jobs
	ops      sync.WaitGroup // operations in flight (enter/leave)

	sessions sessionTable // open exec/cp sessions per instance (sessions.go)

	// volMu serialises volume claims (a create's check + intent) against
	// each other and against volume deletes (volumes.go); a leaf lock
	// held only around store transactions.
	volMu sync.Mutex

	densifySem chan struct{}      // one background densify at a time
	closingCtx context.Context    // done once Close has begun: background jobs stop
	stopAll    context.CancelFunc // ends closingCtx
}

// New returns a manager. Call Reconcile before serving requests.
func New(cfg Config) (*Manager, error) {
	if cfg.Store == nil || cfg.DataDir == "" || len(cfg.Drivers) == 0 || cfg.DialAgent == nil || cfg.Assets == nil || cfg.Clone == nil {
		return nil, errors.New("instances: Config needs DataDir, Store, Drivers, Assets, DialAgent and Clone")
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 20 * time.Second
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ForkMemory == "" {
		cfg.ForkMemory = MemoryOwned
	}
	if _, err := ParseMemoryMode(string(cfg.ForkMemory)); err != nil {
		return nil, fmt.Errorf("instances: Config.ForkMemory: %w", err)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	m := &Manager{
		cfg: cfg, store: cfg.Store, log: cfg.Logger, metrics: cfg.Metrics,
		drivers:  map[string]hypervisor.Driver{},
		locks:    map[string]*instanceLock{},
		runtimes: map[string]*runtime{},
		reserved: map[string]bool{},
		changed:  make(chan struct{}),

		densifySem: make(chan struct{}, 1),
	}
	m.closingCtx, m.stopAll = context.WithCancel(context.Background())
	src := m.instanceMemory
	m.metrics.memory.source.Store(&src)
	for _, d := range cfg.Drivers {
		m.drivers[d.Name()] = d
	}
	if m.cfg.DefaultHypervisor == "" {
		m.cfg.DefaultHypervisor = cfg.Drivers[0].Name()
	}
	if _, ok := m.drivers[m.cfg.DefaultHypervisor]; !ok {
		return nil, fmt.Errorf("instances: default hypervisor %q has no driver", m.cfg.DefaultHypervisor)
	}
	for _, sub := range []string{"instances", "snapshots"} {
		if err := os.MkdirAll(filepath.Join(cfg.DataDir, sub), 0o700); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// enter admits an operation, or refuses it once Close has begun; call the
// returned func when the operation is done.
func (m *Manager) enter() (func(), error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("the daemon is shutting down: %w", errdefs.ErrUnavailable)
	}
	m.ops.Add(1)
	return m.ops.Done, nil
}

// Close refuses new operations, waits for those in flight, stops the
// background jobs, and detaches from every VM, leaving them running: a
// restarted daemon adopts them.
func (m *Manager) Close() error {
	m.mu.Lock()
	wasClosed := m.closed
	m.closed = true
	m.mu.Unlock()
	if wasClosed {
		return nil
	}
	m.ops.Wait()
	m.stopAll()
	m.mu.Lock()
	rts := make([]*runtime, 0, len(m.runtimes))
	for _, rt := range m.runtimes {
		rts = append(rts, rt)
	}
	m.mu.Unlock()
	for _, rt := range rts {
		rt.detach()
		rt.vm.Close()
	}
	m.watchers.Wait()
	return nil
}

func (m *Manager) instanceDir(id string) string {
	return filepath.Join(m.cfg.DataDir, "instances", id)
}

func (m *Manager) snapshotDir(id string) string {
	return filepath.Join(m.cfg.DataDir, "snapshots", id)
}

func (m *Manager) driver(name string) (hypervisor.Driver, error) {
	d, ok := m.drivers[name]
	if !ok {
		return nil, fmt.Errorf("hypervisor %q is not available on this host: %w", name, errdefs.ErrNotImplemented)
	}
	return d, nil
}

// Hypervisors names the hypervisors this host has a driver for, sorted.
func (m *Manager) Hypervisors() []string {
	out := make([]string, 0, len(m.drivers))
	for name := range m.drivers {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// notify wakes everyone waiting for a state change.
func (m *Manager) notify() {
	m.mu.Lock()
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

func (m *Manager) changes() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

// instanceLock is a per-instance mutex whose acquisition a context can
// abandon (a request whose client left, a watcher being detached).
type instanceLock struct{ ch chan struct{} }

func (l *instanceLock) lock(ctx context.Context) error {
	select {
	case l.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the instance lock: %w", ctx.Err())
	}
}

func (l *instanceLock) unlock() { <-l.ch }

func (m *Manager) lockFor(id string) *instanceLock {
	m.mu.Lock()
	defer m.mu.Unlock()
	l, ok := m.locks[id]
	if !ok {
		l = &instanceLock{ch: make(chan struct{}, 1)}
		m.locks[id] = l
	}
	return l
}

func (m *Manager) runtimeOf(id string) *runtime {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.runtimes[id]
}

func (m *Manager) setRuntime(id string, rt *runtime) {
	m.mu.Lock()
	if rt == nil {
		delete(m.runtimes, id)
	} else {
		m.runtimes[id] = rt
	}
	m.mu.Unlock()
	m.notify()
}

// putInstance commits a record.
func (m *Manager) putInstance(inst store.Instance) error {
	err := m.store.Update(func(tx *store.Tx) error { return tx.PutInstance(inst) })
	if err == nil {
		m.notify()
	}
	return err
}

// commit writes the record and removes the intent in one transaction.
func (m *Manager) commit(inst store.Instance, intentID string) error {
	err := m.store.Update(func(tx *store.Tx) error {
		if err := tx.PutInstance(inst); err != nil {
			return err
		}
		return tx.DeleteIntent(intentID)
	})
	if err == nil {
		m.notify()
	}
	return err
}

func (m *Manager) putIntent(in store.Intent) error {
	if in.CreatedAt.IsZero() {
		in.CreatedAt = time.Now().UTC()
	}
	return m.store.Update(func(tx *store.Tx) error { return tx.PutIntent(in) })
}

func (m *Manager) dropIntent(id string) {
	if err := m.store.Update(func(tx *store.Tx) error { return tx.DeleteIntent(id) }); err != nil {
		m.log.Error("delete intent", "intent", id, "err", err)
	}
}

func (m *Manager) specOf(inst store.Instance) hypervisor.Spec {
	return hypervisor.Spec{
		ID: inst.ID, Dir: m.instanceDir(inst.ID),
		VCPUs: inst.Spec.VCPUs, MemoryBytes: inst.Spec.MemoryBytes,
		KernelArgs: inst.Spec.KernelArgs, DriverState: inst.Spec.DriverState,
		SharedMemory: inst.MemoryShared,
		Disks:        disksOf(inst.Spec),
	}
}

func now() time.Time { return time.Now().UTC() }

// vmmRecord is the identity of vm's process as the store keeps it.
func vmmRecord(vm hypervisor.VM) *store.Process {
	p := vm.Process()
	return &store.Process{PID: p.PID, StartTime: p.StartTime}
}

func timePtr(t time.Time) *time.Time { return &t }
