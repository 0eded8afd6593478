package instances

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/cleanup"
	"github.com/zygote/zygote/internal/crashpoint"
	"github.com/zygote/zygote/internal/ids"
	"github.com/zygote/zygote/internal/names"
	"github.com/zygote/zygote/store"
)

// CreateRequest describes a new instance. Zero fields take defaults.
type CreateRequest struct {
	Name        string
	Hypervisor  string
	VCPUs       int
	MemoryBytes int64
	KernelArgs  string
	// Command is the workload the guest agent starts after boot; empty
	// means none (the VM only serves exec).
	Command []string
	Env     map[string]string
	Tags    map[string]string
	// Image is an OCI reference: the instance boots the image's root disk
	// with an overlay disk of OverlayBytes (default DefaultOverlayBytes)
	// and runs its entrypoint + cmd, which Entrypoint and Cmd override
	// (docker's rules, disks.go); Env is laid over the image's. Without
	// Image, Entrypoint + Cmd become Command.
	Image        string
	Entrypoint   []string
	Cmd          []string
	OverlayBytes int64
	// Volumes to attach (volumes.go); image instances only.
	Volumes []VolumeMount
	// NoNetwork opts out of networking (hypeman's network.enabled:
	// false): the guest has only lo. Networking is on by default when the
	// manager has a Networker.
	NoNetwork bool
	// AllowPeers lets the guest exchange traffic with other guests whose
	// instances allow peers too (default: isolated from them). Forks of
	// the instance inherit it.
	AllowPeers bool
	// Publish publishes guest ports on host ports.
	Publish []Port
}

// Defaults and limits of CreateRequest.
const (
	DefaultVCPUs       = 1
	DefaultMemoryBytes = 256 << 20
	MinMemoryBytes     = 64 << 20
	MaxVCPUs           = 64
	maxKernelArgs      = 1024 // the x86 command line holds 2048 bytes, ours included
	maxTags            = 50
)

var tagChars = regexp.MustCompile(`^[A-Za-z0-9 _.:/=+@-]*$`)

// ValidateTags applies hypeman's tag rules.
func ValidateTags(tags map[string]string) error {
	if len(tags) > maxTags {
		return fmt.Errorf("%d tags, at most %d are allowed: %w", len(tags), maxTags, errdefs.ErrInvalidArgument)
	}
	for k, v := range tags {
		if len(k) < 1 || len(k) > 128 || !tagChars.MatchString(k) {
			return fmt.Errorf("tag key %q: 1-128 characters from [A-Za-z0-9 _.:/=+@-]: %w", k, errdefs.ErrInvalidArgument)
		}
		if len(v) > 256 || !tagChars.MatchString(v) {
			return fmt.Errorf("tag %q value %q: 0-256 characters from [A-Za-z0-9 _.:/=+@-]: %w", k, v, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

func (m *Manager) validateCreate(req *CreateRequest) error {
	if err := names.Validate("instance name", req.Name); err != nil {
		return err
	}
	if err := m.validateImage(req); err != nil {
		return err
	}
	if err := m.validateVolumes(req); err != nil {
		return err
	}
	if req.Hypervisor == "" {
		req.Hypervisor = m.cfg.DefaultHypervisor
	}
	if _, ok := m.drivers[req.Hypervisor]; !ok {
		return fmt.Errorf("hypervisor %q is not available on this host (available: %s): %w",
			req.Hypervisor, strings.Join(m.Hypervisors(), ", "), errdefs.ErrInvalidArgument)
	}
	if req.VCPUs == 0 {
		req.VCPUs = DefaultVCPUs
	}
	if req.VCPUs < 1 || req.VCPUs > MaxVCPUs {
		return fmt.Errorf("vcpus must be between 1 and %d, got %d: %w", MaxVCPUs, req.VCPUs, errdefs.ErrInvalidArgument)
	}
	if req.MemoryBytes == 0 {
		req.MemoryBytes = DefaultMemoryBytes
	}
	if req.MemoryBytes < MinMemoryBytes || req.MemoryBytes%(1<<20) != 0 {
		return &FieldError{Field: "size", Err: fmt.Errorf("size must be a whole number of MiB and at least %d MiB, got %d bytes: %w",
			MinMemoryBytes>>20, req.MemoryBytes, errdefs.ErrInvalidArgument)}
	}
	if c, err := hostCapacity(m.cfg.DataDir); err != nil {
		m.log.Warn("cannot check the guest RAM against the host", "err", err)
	} else if err := checkMemory(req.MemoryBytes, c); err != nil {
		return err
	}
	if len(req.KernelArgs) > maxKernelArgs || strings.ContainsAny(req.KernelArgs, "\n\r\x00") {
		return fmt.Errorf("kernel args must be one line of at most %d bytes: %w", maxKernelArgs, errdefs.ErrInvalidArgument)
	}
	for k := range req.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("environment variable name %q is invalid: %w", k, errdefs.ErrInvalidArgument)
		}
	}
	if err := m.validateNetwork(req); err != nil {
		return err
	}
	return ValidateTags(req.Tags)
}

// reserveName holds a name for an instance being created, so two
// concurrent creates cannot both boot a VM for one name.
func (m *Manager) reserveName(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	taken := m.reserved[name]
	if !taken {
		m.store.View(func(tx *store.Tx) error { taken = tx.NameTaken(name, ""); return nil })
	}
	if taken {
		return fmt.Errorf("instance name %q is already in use: %w", name, errdefs.ErrAlreadyExists)
	}
	m.reserved[name] = true
	return nil
}

func (m *Manager) releaseName(name string) {
	m.mu.Lock()
	delete(m.reserved, name)
	m.mu.Unlock()
}

// Create makes a new instance and boots it. It returns once the VMM runs;
// the guest finishes booting in the background (Initializing → Running).
func (m *Manager) Create(ctx context.Context, req CreateRequest) (Instance, error) {
	reserved := false
	defer func() {
		if reserved {
			m.releaseName(req.Name)
		}
	}()
	var inst store.Instance
	_, err := m.run(ctx, operation{
		name: "create",
		validate: func() error {
			if err := m.validateCreate(&req); err != nil {
				return err
			}
			if err := m.reserveName(req.Name); err != nil {
				return err
			}
			reserved = true
			return nil
		},
		label: func(*targets) string { return "create " + req.Name },
	}, func(*targets) (err error) {
		inst, err = m.create(ctx, req)
		return err
	})
	if err != nil {
		return Instance{}, err
	}
	return m.view(inst), nil
}

func (m *Manager) create(ctx context.Context, req CreateRequest) (store.Instance, error) {
	inst := store.Instance{
		ID: ids.New(), Name: req.Name, Tags: req.Tags, CreatedAt: now(), Hostname: req.Name,
		Spec: store.Spec{
			Hypervisor: req.Hypervisor, VCPUs: req.VCPUs, MemoryBytes: req.MemoryBytes,
			KernelArgs: req.KernelArgs, Command: req.Command, Env: req.Env, Image: req.Image,
			Network:    m.cfg.Network != nil && !req.NoNetwork,
			AllowPeers: m.cfg.Network != nil && !req.NoNetwork && req.AllowPeers,
		},
		Publish: portsToRecord(req.Publish),
	}
	l := m.lockFor(inst.ID)
	if err := l.lock(ctx); err != nil {
		return inst, err
	}
	defer l.unlock()
	// Before the intent: a pull touches no instance file.
	if err := m.ensureImage(ctx, req, &inst); err != nil {
		return inst, err
	}
	if err := m.resolveVolumes(req, &inst); err != nil {
		return inst, err
	}

	undo := cleanup.New()
	defer func() {
		if err := undo.Run(ctx); err != nil {
			m.log.Error("roll back create", "instance", inst.ID, "err", err)
		}
	}()
	intent := store.Intent{ID: inst.ID, Op: store.OpCreate, InstanceID: inst.ID, Pending: &inst}
	release, err := m.claimVolumes(inst) // the intent makes the claim visible
	if err != nil {
		return inst, err
	}
	err = m.putIntent(intent)
	release()
	if err != nil {
		return inst, err
	}
	undo.Add("drop intent", func(context.Context) error { m.dropIntent(intent.ID); return nil })

	dir := m.instanceDir(inst.ID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return inst, err
	}
	undo.Add("remove instance directory", func(context.Context) error { return os.RemoveAll(dir) })
	if err := m.makeDisks(ctx, inst, dir); err != nil {
		return inst, err
	}
	crashpoint.Hit(crashpoint.CreateDisks)

	if inst.Spec.Network {
		// Before the boot, under the create intent: a crash from here on
		// rolls back and the reconcile releases the slot.
		if _, err := m.slotOf(ctx, inst); err != nil {
			return inst, err
		}
		undo.Add("release network slot", func(ctx context.Context) error { return m.releaseSlot(ctx, inst.ID) })
		crashpoint.Hit(crashpoint.CreateSlotAcquired)
	}
	vm, err := m.boot(ctx, &inst)
	if err != nil {
		return inst, err
	}
	undo.Add("stop VMM", func(ctx context.Context) error { return vm.Quit(ctx) })
	crashpoint.Hit(crashpoint.CreateBooted)

	if err := m.commit(inst, intent.ID); err != nil {
		return inst, err
	}
	undo.Release()
	m.attachRuntime(inst, vm, nil)
	m.log.Info("instance created", "instance", inst.ID, "name", inst.Name, "pid", inst.VMM.PID)
	return inst, nil
}

// reconcileCreate is the crash rule of a create: roll back, killing its
// VMM, releasing its network slot and removing its directory (the record
// was never committed).
func (m *Manager) reconcileCreate(ctx context.Context, in store.Intent) error {
	if in.Pending != nil {
		m.killVMMs(ctx, *in.Pending)
	}
	if err := m.releaseSlot(ctx, in.InstanceID); err != nil {
		return err
	}
	return os.RemoveAll(m.instanceDir(in.InstanceID))
}
