package store

import (
	"encoding/json"
	"time"
)

// PowerState is the persisted fact about an instance's VMM: whether one
// should be running and whether a saved memory image exists. The state a
// client sees (Initializing, Running, Paused, …) is derived from it plus
// what the manager observes at runtime.
type PowerState string

const (
	// Stopped: no VMM, no saved memory. Start boots from scratch.
	Stopped PowerState = "Stopped"
	// Running: a VMM was started and, as far as the store knows, lives.
	Running PowerState = "Running"
	// Standby: no VMM; memory and device state are saved in the instance
	// directory and restore resumes them.
	Standby PowerState = "Standby"
)

// Spec describes the machine: what a restore or a fork must reproduce
// exactly. It travels from an instance into its snapshots and forks.
type Spec struct {
	Hypervisor  string            `json:"hypervisor"`
	VCPUs       int               `json:"vcpus"`
	MemoryBytes int64             `json:"memory_bytes"`
	KernelArgs  string            `json:"kernel_args,omitempty"`
	Command     []string          `json:"command,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Image       string            `json:"image,omitempty"`
	// Disks: an instance made from an image (ImageDigest set) has its
	// image's read-only root disk (a hard link in its directory) and its
	// own writable overlay disk of OverlayBytes (sparse ext4).
	ImageDigest  string `json:"image_digest,omitempty"`
	RootFSType   string `json:"rootfs_type,omitempty"`
	OverlayBytes int64  `json:"overlay_bytes,omitempty"`
	// Workload is an image instance's program, resolved at create from
	// the image's config and the request's overrides.
	Workload *Workload `json:"workload,omitempty"`
	// Volumes attached at create: each a hard link vol<i>.ext4 in the
	// instance directory to the volume's disk.
	Volumes []VolumeMount `json:"volumes,omitempty"`
	// Network: the machine has a NIC backed by a network slot (a fork
	// inherits it: its saved device state has the NIC).
	Network bool `json:"network,omitempty"`
	// AllowPeers: the machine's slot lets it exchange traffic with other
	// slots that allow peers too (zygote's network.allow_peers). A fork
	// inherits it with the rest of the spec.
	AllowPeers bool `json:"allow_peers,omitempty"`
	// DriverState is opaque to everyone but the driver that wrote it
	// (machine type, accelerator, …); a driver versions its own encoding
	// inside it. (Schema 1 also declared driver_state_version; nothing
	// ever wrote or read it, and decoding ignores it if present.)
	DriverState json.RawMessage `json:"driver_state,omitempty"`
}

// Workload is the program an image instance runs in its image's root.
type Workload struct {
	// Entrypoint and Cmd as resolved (image config, then the request's
	// overrides); the program's argv is Entrypoint followed by Cmd.
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	// Env is KEY=VALUE: the image's, then the request's.
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// VolumeMount is a volume attached to an instance.
type VolumeMount struct {
	VolumeID  string `json:"volume_id"`
	MountPath string `json:"mount_path"`
	ReadOnly  bool   `json:"readonly,omitempty"`
}

// Process identifies a VMM process across daemon restarts: a pid alone may
// be reused, the pair (pid, start time in clock ticks since boot) is not.
type Process struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
}

// Origin records where a fork came from. It is informational only: nothing
// ever reads a file through it.
type Origin struct {
	InstanceID   string `json:"instance_id,omitempty"`
	InstanceName string `json:"instance_name,omitempty"`
	SnapshotID   string `json:"snapshot_id,omitempty"`
}

// Instance is one VM.
type Instance struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Spec      Spec              `json:"spec"`
	State     PowerState        `json:"state"`
	Tags      map[string]string `json:"tags,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	StartedAt *time.Time        `json:"started_at,omitempty"`
	StoppedAt *time.Time        `json:"stopped_at,omitempty"`
	// VMM is set while State is Running.
	VMM *Process `json:"vmm,omitempty"`
	// BootID is the guest kernel's boot id reported by the agent: the same
	// boot continues across standby and restore, a start makes a new one.
	BootID string `json:"boot_id,omitempty"`
	// CacheKey names the content of the memory file; it changes whenever
	// the content may change (every run), and a fork inherits it because its
	// copy is byte-identical.
	CacheKey   string  `json:"cache_key,omitempty"`
	ForkedFrom *Origin `json:"forked_from,omitempty"`
	// Hostname is the guest's hostname; a fork gets its own.
	Hostname string `json:"hostname,omitempty"`
	// NewIdentity is set on a fork until its guest has been told, after its
	// first restore, that it is a new machine.
	NewIdentity bool `json:"new_identity,omitempty"`
	// RestorePending is set from a restore's commit until the guest has
	// been told (clock, entropy, identity), so a daemon that dies in
	// between tells it on adoption.
	RestorePending bool `json:"restore_pending,omitempty"`
	// MemoryShared: the instance's memory file may be a hard link shared
	// with other instances (immutable by rule); its VMM maps it privately
	// and never writes it. Unset: the instance owns its memory file and
	// breaks any link before it writes it.
	MemoryShared bool   `json:"memory_shared,omitempty"`
	ExitCode     *int   `json:"exit_code,omitempty"`
	ExitMessage  string `json:"exit_message,omitempty"`
	// Publish lists the host ports published to the guest (not inherited
	// by forks: a host port has one owner).
	Publish []Port `json:"publish,omitempty"`
}

// Port is a published port: HostPort on the host to GuestPort in the
// guest, Protocol tcp or udp.
type Port struct {
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	Protocol  string `json:"protocol"`
}

// SnapshotKind says what a snapshot holds.
type SnapshotKind string

const (
	// SnapshotStandby holds memory, device state and disks.
	SnapshotStandby SnapshotKind = "Standby"
	// SnapshotStopped holds disks only.
	SnapshotStopped SnapshotKind = "Stopped"
)

// Snapshot is a named, immutable, fully owned copy of an instance.
type Snapshot struct {
	ID                 string            `json:"id"`
	Name               string            `json:"name,omitempty"`
	Kind               SnapshotKind      `json:"kind"`
	Tags               map[string]string `json:"tags,omitempty"`
	SourceInstanceID   string            `json:"source_instance_id"`
	SourceInstanceName string            `json:"source_instance_name"`
	Spec               Spec              `json:"spec"`
	CacheKey           string            `json:"cache_key,omitempty"`
	Hostname           string            `json:"hostname,omitempty"`
	BootID             string            `json:"boot_id,omitempty"`
	SizeBytes          int64             `json:"size_bytes"`
	CreatedAt          time.Time         `json:"created_at"`
}

// Op names an operation that journals an intent.
type Op string

const (
	OpCreate          Op = "create"
	OpStart           Op = "start"
	OpStop            Op = "stop"
	OpStandby         Op = "standby"
	OpRestore         Op = "restore"
	OpDelete          Op = "delete"
	OpFork            Op = "fork"
	OpSnapshot        Op = "snapshot"
	OpSnapshotRestore Op = "snapshot_restore"
	OpSnapshotDelete  Op = "snapshot_delete"
	// OpResume marks a source parked for a fork or a snapshot of a running
	// instance: whatever else a crash interrupted, the source is restored.
	OpResume Op = "resume"
)

// Intent is an operation in flight. It is written before the operation
// changes anything on disk and removed when its result is committed; one
// found at startup was interrupted by a crash and is finished or rolled
// back by the reconcile.
type Intent struct {
	ID string `json:"id"`
	Op Op     `json:"op"`
	// InstanceID is the instance the operation changes or creates.
	InstanceID string `json:"instance_id,omitempty"`
	// SnapshotID is the snapshot the operation creates or deletes.
	SnapshotID string `json:"snapshot_id,omitempty"`
	// SourceID is the instance or snapshot a fork or snapshot reads from.
	SourceID string `json:"source_id,omitempty"`
	// Pending is the record the operation will commit, for ops whose
	// result is a new record (create).
	Pending *Instance `json:"pending,omitempty"`
	// Members are the instances a fork call makes: all of them or none
	// survive a crash.
	Members   []string  `json:"members,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}
