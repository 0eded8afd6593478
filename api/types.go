package api

import (
	"encoding/json"
	"time"
)

// Wire types. openapi.yaml is the source of truth; spec_test.go validates
// every request and response the tests exchange against it, so these
// types cannot drift from the document unnoticed.

// Health is GET /health.
type Health struct {
	Status string `json:"status"`
}

// Error is every error body.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// RequestID (extension) names the request in the daemon log, where
	// the full error is.
	RequestID string `json:"request_id,omitempty"`
}

// CreateInstanceRequest is POST /instances.
type CreateInstanceRequest struct {
	Name        string            `json:"name"`
	Image       string            `json:"image,omitempty"`
	Platform    string            `json:"platform,omitempty"`
	Size        string            `json:"size,omitempty"`
	HotplugSize string            `json:"hotplug_size,omitempty"`
	OverlaySize string            `json:"overlay_size,omitempty"`
	VCPUs       int               `json:"vcpus,omitempty"`
	Hypervisor  string            `json:"hypervisor,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
	Entrypoint  []string          `json:"entrypoint,omitempty"`
	Cmd         []string          `json:"cmd,omitempty"`
	KernelArgs  string            `json:"kernel_args,omitempty"`
	Volumes     []VolumeMount     `json:"volumes,omitempty"`
	// Network is hypeman's network object; nil: networking on (when the
	// daemon has it).
	Network *NetworkRequest `json:"network,omitempty"`
	// Publish publishes guest ports on host ports (zygote extension).
	Publish []PublishedPort `json:"publish,omitempty"`
}

// NetworkRequest is the network object of a create request.
type NetworkRequest struct {
	// Enabled defaults to true; false: the guest has only lo.
	Enabled *bool `json:"enabled,omitempty"`
	// AllowPeers (zygote extension) lets the guest exchange traffic with
	// other guests that allow peers; forks inherit it. Default false:
	// guests reach the gateway, the host and beyond, never each other.
	AllowPeers bool `json:"allow_peers,omitempty"`
	// hypeman's; any non-empty value is 501 not_supported.
	BandwidthDownload string          `json:"bandwidth_download,omitempty"`
	BandwidthUpload   string          `json:"bandwidth_upload,omitempty"`
	Egress            json.RawMessage `json:"egress,omitempty"`
}

// PublishedPort publishes guest_port on host_port (all host addresses).
type PublishedPort struct {
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	Protocol  string `json:"protocol,omitempty"`
}

// InstanceNetwork is an instance's network (hypeman's fields).
type InstanceNetwork struct {
	Enabled bool `json:"enabled"`
	// Name, IP and MAC are set when enabled; IP is the slot's address
	// (what users connect to), null while the instance has no slot.
	Name    string          `json:"name,omitempty"`
	IP      *string         `json:"ip,omitempty"`
	MAC     *string         `json:"mac,omitempty"`
	Publish []PublishedPort `json:"publish,omitempty"`
	// AllowPeers (zygote extension): the guest may talk to other guests
	// that allow peers.
	AllowPeers bool `json:"allow_peers,omitempty"`
}

// VolumeMount attaches a volume (hypeman's shape; overlay is refused).
type VolumeMount struct {
	VolumeID    string `json:"volume_id"`
	MountPath   string `json:"mount_path"`
	ReadOnly    bool   `json:"readonly,omitempty"`
	Overlay     bool   `json:"overlay,omitempty"`
	OverlaySize string `json:"overlay_size,omitempty"`
}

// Volume is the volume resource.
type Volume struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	SizeGB    int64             `json:"size_gb"`
	SizeBytes int64             `json:"size_bytes"`
	Tags      map[string]string `json:"tags,omitempty"`
	CreatedAt string            `json:"created_at"`
}

// CreateVolumeRequest is POST /volumes.
type CreateVolumeRequest struct {
	Name   string            `json:"name"`
	SizeGB int64             `json:"size_gb"`
	ID     string            `json:"id,omitempty"`
	Tags   map[string]string `json:"tags,omitempty"`
}

// Origin says where a fork came from.
type Origin struct {
	InstanceID   string `json:"instance_id,omitempty"`
	InstanceName string `json:"instance_name,omitempty"`
	SnapshotID   string `json:"snapshot_id,omitempty"`
}

// Instance is the instance resource.
type Instance struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Image       string            `json:"image"`
	State       string            `json:"state"`
	StateError  *string           `json:"state_error,omitempty"`
	Size        string            `json:"size"`
	MemoryBytes int64             `json:"memory_bytes"`
	VCPUs       int               `json:"vcpus"`
	Hypervisor  string            `json:"hypervisor"`
	Accelerator string            `json:"accelerator,omitempty"`
	Hostname    string            `json:"hostname,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
	Entrypoint  []string          `json:"entrypoint,omitempty"`
	Cmd         []string          `json:"cmd,omitempty"`
	KernelArgs  string            `json:"kernel_args,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	StartedAt   *time.Time        `json:"started_at,omitempty"`
	StoppedAt   *time.Time        `json:"stopped_at,omitempty"`
	ExitCode    *int              `json:"exit_code,omitempty"`
	ExitMessage string            `json:"exit_message,omitempty"`
	HasSnapshot bool              `json:"has_snapshot"`
	ForkedFrom  *Origin           `json:"forked_from,omitempty"`
	// ImageDigest and OverlaySize describe an image instance's disks.
	ImageDigest string        `json:"image_digest,omitempty"`
	OverlaySize string        `json:"overlay_size,omitempty"`
	Volumes     []VolumeMount `json:"volumes,omitempty"`
	// HotplugSize is always "0 B": zygote has no memory hotplug.
	HotplugSize string `json:"hotplug_size"`
	// Network is the instance's network.
	Network InstanceNetwork `json:"network"`
	// Memory is "owned" or "shared" (a sharing fork); MemoryGroup names
	// the memory file's inode and MemoryLinks how many hold it.
	Memory      string `json:"memory,omitempty"`
	MemoryGroup string `json:"memory_group,omitempty"`
	MemoryLinks int    `json:"memory_links,omitempty"`
}

// StartInstanceRequest is POST /instances/{id}/start. zygote refuses
// entrypoint and cmd (501): the workload is fixed at create.
type StartInstanceRequest struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
}

// StandbyInstanceRequest is POST /instances/{id}/standby. Only disabled
// compression is supported.
type StandbyInstanceRequest struct {
	Compression      *SnapshotCompressionConfig `json:"compression,omitempty"`
	CompressionDelay string                     `json:"compression_delay,omitempty"`
}

// WaitForStateResponse is GET /instances/{id}/wait.
type WaitForStateResponse struct {
	State      string  `json:"state"`
	StateError *string `json:"state_error,omitempty"`
	TimedOut   bool    `json:"timed_out"`
}

// ExecRequest is the first (text) frame of an exec WebSocket.
type ExecRequest struct {
	Command      []string          `json:"command"`
	TTY          bool              `json:"tty,omitempty"`
	Env          map[string]string `json:"env,omitempty"`
	Cwd          string            `json:"cwd,omitempty"`
	Timeout      int32             `json:"timeout,omitempty"`
	WaitForAgent int32             `json:"wait_for_agent,omitempty"`
	Rows         uint32            `json:"rows,omitempty"`
	Cols         uint32            `json:"cols,omitempty"`
	// StreamTags (zygote extension): prefix output frames with 1 (stdout)
	// or 2 (stderr), and accept {"stdin_eof": true} to close stdin.
	StreamTags bool `json:"stream_tags,omitempty"`
}

// ExecControl is a client text frame: a resize (TTY mode, hypeman's
// control message) or, in stream_tags mode, the end of stdin.
type ExecControl struct {
	StdinEOF bool        `json:"stdin_eof,omitempty"`
	Resize   *ExecResize `json:"resize,omitempty"`
}

// ExecResize is a new terminal size; both must be > 0.
type ExecResize struct {
	Rows uint32 `json:"rows"`
	Cols uint32 `json:"cols"`
}

// ExecExit is the last server frame of an exec.
type ExecExit struct {
	ExitCode int `json:"exitCode"`
}

// Exec output stream tags (stream_tags mode).
const (
	StreamStdout byte = 1
	StreamStderr byte = 2
)

// SnapshotCompressionConfig is accepted for hypeman clients; only
// Enabled=false is supported.
type SnapshotCompressionConfig struct {
	Enabled   bool   `json:"enabled"`
	Algorithm string `json:"algorithm,omitempty"`
	Level     *int   `json:"level,omitempty"`
}

// CreateSnapshotRequest is POST /instances/{id}/snapshots.
type CreateSnapshotRequest struct {
	Kind        string                     `json:"kind"`
	Name        string                     `json:"name,omitempty"`
	Tags        map[string]string          `json:"tags,omitempty"`
	Compression *SnapshotCompressionConfig `json:"compression,omitempty"`
}

// RestoreSnapshotRequest is POST /instances/{id}/snapshots/{sid}/restore.
type RestoreSnapshotRequest struct {
	TargetState      string `json:"target_state,omitempty"`
	TargetHypervisor string `json:"target_hypervisor,omitempty"`
}

// Snapshot is the snapshot resource.
type Snapshot struct {
	ID                 string            `json:"id"`
	Name               *string           `json:"name"`
	Kind               string            `json:"kind"`
	Tags               map[string]string `json:"tags,omitempty"`
	SourceInstanceID   string            `json:"source_instance_id"`
	SourceInstanceName string            `json:"source_instance_name"`
	SourceHypervisor   string            `json:"source_hypervisor"`
	CreatedAt          time.Time         `json:"created_at"`
	SizeBytes          int64             `json:"size_bytes"`
	MemoryBytes        int64             `json:"memory_bytes,omitempty"`
	CompressionState   string            `json:"compression_state"`
	CacheKey           string            `json:"cache_key,omitempty"`
}

// ForkInstanceRequest is POST /instances/{id}/fork.
type ForkInstanceRequest struct {
	Name        string `json:"name,omitempty"`
	FromRunning bool   `json:"from_running,omitempty"`
	TargetState string `json:"target_state,omitempty"`
	Count       int    `json:"count,omitempty"`
	NamePrefix  string `json:"name_prefix,omitempty"`
	// Memory is "shared" or "owned" ("": the daemon's default).
	Memory string `json:"memory,omitempty"`
}

// ForkSnapshotRequest is POST /snapshots/{id}/fork.
type ForkSnapshotRequest struct {
	Name             string `json:"name,omitempty"`
	TargetState      string `json:"target_state,omitempty"`
	TargetHypervisor string `json:"target_hypervisor,omitempty"`
	Count            int    `json:"count,omitempty"`
	NamePrefix       string `json:"name_prefix,omitempty"`
	Memory           string `json:"memory,omitempty"`
}

// PullImageRequest is POST /images.
type PullImageRequest struct {
	Name        string            `json:"name"`
	Platform    string            `json:"platform,omitempty"`
	Credentials *ImageCredentials `json:"credentials,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
}

// ImageCredentials authenticate one pull; they are never stored.
type ImageCredentials struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	RegistryToken string `json:"registry_token,omitempty"`
}

// Image is the image resource.
type Image struct {
	Name          string            `json:"name"`
	Digest        string            `json:"digest"`
	Status        string            `json:"status"`
	QueuePosition *int              `json:"queue_position,omitempty"`
	Error         *string           `json:"error,omitempty"`
	SizeBytes     *int64            `json:"size_bytes,omitempty"`
	Entrypoint    []string          `json:"entrypoint,omitempty"`
	Cmd           []string          `json:"cmd,omitempty"`
	Env           map[string]string `json:"env,omitempty"`
	WorkingDir    *string           `json:"working_dir,omitempty"`
	Platform      string            `json:"platform,omitempty"`
	CreatedAt     time.Time         `json:"created_at"`
	// Extensions.
	Format   string         `json:"format,omitempty"`
	User     string         `json:"user,omitempty"`
	Progress *ImageProgress `json:"progress,omitempty"`
}

// ImageProgress (extension) counts a running pull's work: layers applied
// and compressed bytes read.
type ImageProgress struct {
	LayersDone  int   `json:"layers_done"`
	LayersTotal int   `json:"layers_total"`
	BytesDone   int64 `json:"bytes_done"`
	BytesTotal  int64 `json:"bytes_total"`
}
