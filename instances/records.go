package instances

import (
	"time"

	"github.com/zygote/zygote/snapshots"
	"github.com/zygote/zygote/store"
)

// The manager's domain types, what its callers (the API) see. They are
// declared here, not borrowed from the store: a store record can change
// shape (or gain fields only the manager reads, like the driver's opaque
// state or the restore bookkeeping) without changing this package's
// contract. The conversions below are the one boundary between records and
// domain values (and, for snapshots, the manifest format).

// Spec is the machine an instance runs: what a restore or a fork
// reproduces.
type Spec struct {
	Hypervisor  string
	VCPUs       int
	MemoryBytes int64
	KernelArgs  string
	Command     []string
	Env         map[string]string
	Image       string
	// Image instances: the image's digest, the overlay disk's size and
	// the resolved workload (Command and Env are the built-in guest's).
	ImageDigest  string
	OverlayBytes int64
	Entrypoint   []string
	Cmd          []string
	WorkloadEnv  []string
	WorkingDir   string
	User         string
	// Volumes attached (VolumeMount.Volume is the volume's id).
	Volumes []VolumeMount
	// Network: the machine has a NIC backed by a network slot.
	Network bool
	// AllowPeers: its slot may talk to other slots that allow peers.
	AllowPeers bool
}

// Origin says where a fork came from. Informational only: nothing ever
// reads a file through it.
type Origin struct {
	InstanceID   string
	InstanceName string
	SnapshotID   string
}

// Instance is an instance as a client sees it: its record's public facts
// and its derived state.
type Instance struct {
	ID          string
	Name        string
	Spec        Spec
	Tags        map[string]string
	CreatedAt   time.Time
	StartedAt   *time.Time
	StoppedAt   *time.Time
	Hostname    string
	BootID      string
	CacheKey    string
	ForkedFrom  *Origin
	ExitCode    *int
	ExitMessage string

	State      State
	StateError string
	// HasSavedState: a standby image (memory + device state) exists.
	HasSavedState bool
	// Accelerator is the VMM's accelerator when known ("kvm", "tcg").
	Accelerator string
	// Memory is how the instance holds its memory file (sharing.go).
	Memory MemoryMode
	// MemoryGroup names the memory file's inode (the sharing group: every
	// instance and snapshot with the same group holds one file) and
	// MemoryLinks how many hold it; empty and 0 without a memory file, or
	// when the driver cannot share memory.
	MemoryGroup string
	MemoryLinks int
	// Network is the instance's network (its slot's address).
	Network Network
}

// SnapshotKind says what a snapshot holds.
type SnapshotKind string

// Snapshot kinds.
const (
	// SnapshotStandby holds memory, device state and disks.
	SnapshotStandby SnapshotKind = "Standby"
	// SnapshotStopped holds disks only.
	SnapshotStopped SnapshotKind = "Stopped"
)

// Snapshot is a named, immutable, fully owned copy of an instance.
type Snapshot struct {
	ID                 string
	Name               string
	Kind               SnapshotKind
	Tags               map[string]string
	SourceInstanceID   string
	SourceInstanceName string
	Spec               Spec
	CacheKey           string
	Hostname           string
	BootID             string
	SizeBytes          int64
	CreatedAt          time.Time
}

func specOfRecord(s store.Spec) Spec {
	v := Spec{Hypervisor: s.Hypervisor, VCPUs: s.VCPUs, MemoryBytes: s.MemoryBytes, KernelArgs: s.KernelArgs,
		Command: s.Command, Env: s.Env, Image: s.Image, ImageDigest: s.ImageDigest, OverlayBytes: s.OverlayBytes,
		Network: s.Network, AllowPeers: s.AllowPeers}
	for _, m := range s.Volumes {
		v.Volumes = append(v.Volumes, VolumeMount{Volume: m.VolumeID, MountPath: m.MountPath, ReadOnly: m.ReadOnly})
	}
	if w := s.Workload; w != nil {
		v.Entrypoint, v.Cmd, v.WorkloadEnv, v.WorkingDir, v.User = w.Entrypoint, w.Cmd, w.Env, w.WorkingDir, w.User
	}
	return v
}

// instanceOf is the domain value of a record, without the derived state
// (view fills that in).
func instanceOf(r store.Instance) Instance {
	v := Instance{
		ID: r.ID, Name: r.Name, Spec: specOfRecord(r.Spec), Tags: r.Tags, CreatedAt: r.CreatedAt,
		StartedAt: r.StartedAt, StoppedAt: r.StoppedAt, Hostname: r.Hostname, BootID: r.BootID,
		CacheKey: r.CacheKey, ExitCode: r.ExitCode, ExitMessage: r.ExitMessage,
		Memory: memoryModeOf(r),
	}
	if o := r.ForkedFrom; o != nil {
		v.ForkedFrom = &Origin{InstanceID: o.InstanceID, InstanceName: o.InstanceName, SnapshotID: o.SnapshotID}
	}
	return v
}

func snapshotOf(r store.Snapshot) Snapshot {
	return Snapshot{
		ID: r.ID, Name: r.Name, Kind: SnapshotKind(r.Kind), Tags: r.Tags, SourceInstanceID: r.SourceInstanceID,
		SourceInstanceName: r.SourceInstanceName, Spec: specOfRecord(r.Spec), CacheKey: r.CacheKey,
		Hostname: r.Hostname, BootID: r.BootID, SizeBytes: r.SizeBytes, CreatedAt: r.CreatedAt,
	}
}

// manifestOf is the on-disk description of a snapshot record; the
// manifest format is the snapshots package's own.
func manifestOf(s store.Snapshot) snapshots.Manifest {
	return snapshots.Manifest{
		ID: s.ID, Name: s.Name, Kind: snapshots.Kind(s.Kind), SourceInstanceID: s.SourceInstanceID,
		SourceInstanceName: s.SourceInstanceName, CacheKey: s.CacheKey,
		Hostname: s.Hostname, BootID: s.BootID, CreatedAt: s.CreatedAt,
		Spec: snapshots.Spec{
			Hypervisor: s.Spec.Hypervisor, VCPUs: s.Spec.VCPUs, MemoryBytes: s.Spec.MemoryBytes,
			KernelArgs: s.Spec.KernelArgs, Command: s.Spec.Command, Env: s.Spec.Env, Image: s.Spec.Image,
			ImageDigest: s.Spec.ImageDigest, RootFSType: s.Spec.RootFSType, OverlayBytes: s.Spec.OverlayBytes,
			Network: s.Spec.Network, AllowPeers: s.Spec.AllowPeers, DriverState: s.Spec.DriverState,
		},
	}
}
