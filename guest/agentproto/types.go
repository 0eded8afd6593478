package agentproto

import (
	"fmt"
	"time"
)

// Version is the protocol version. Host and guest must speak the same one;
// the guest reports its version in every Welcome and refuses a session
// whose Hello carries another. Bump it on any incompatible change to the
// link frames, the messages or the JSON bodies below.
const Version = 1

// AgentPortName is the virtio-serial port name the guest agent looks for
// (QEMU: -device virtserialport,...,name=zygote.agent).
const AgentPortName = "zygote.agent"

// HostHello is the payload of FrameHello.
type HostHello struct {
	Version int `json:"version"`
}

// Hello is the payload of FrameWelcome: who the guest is.
type Hello struct {
	Version int `json:"version"`
	// BootID is the guest kernel's boot id. Forks restored from one
	// snapshot share it: it names a boot, not a VM.
	BootID     string `json:"boot_id"`
	Configured bool   `json:"configured"`
	Hostname   string `json:"hostname"`
	// Kernel is the guest kernel release (uname -r).
	Kernel string `json:"kernel,omitempty"`
	// Restores counts the Restored calls this boot has seen.
	Restores int `json:"restores"`
	// Error is set when the guest refuses the session (version mismatch).
	Error string `json:"error,omitempty"`
	// Workload is the boot's workload (nil: none started); Exited tells a
	// reconnecting host about an exit that happened while it was away.
	Workload *WorkloadStatus `json:"workload,omitempty"`
	// Features lists optional abilities of this agent (Feature*): a host
	// must not send a request an agent without the feature would ignore
	// (an unknown JSON field is silently dropped).
	Features []string `json:"features,omitempty"`
}

// Ops carried in Request.Op.
const (
	OpPing      = "ping"
	OpConfigure = "configure"
	OpExec      = "exec"
	OpSignal    = "signal"
	OpResize    = "resize"
	OpRestored  = "restored"
	OpShutdown  = "shutdown"
)

// Request opens a stream. Exactly the body named by Op is set.
type Request struct {
	Op        string            `json:"op"`
	Configure *ConfigureRequest `json:"configure,omitempty"`
	Exec      *ExecRequest      `json:"exec,omitempty"`
	Signal    *SignalRequest    `json:"signal,omitempty"`
	Resize    *ResizeRequest    `json:"resize,omitempty"`
	Restored  *RestoredRequest  `json:"restored,omitempty"`
	Stat      *StatRequest      `json:"stat,omitempty"`
	CopyFrom  *CopyFromRequest  `json:"copy_from,omitempty"`
	CopyTo    *CopyToRequest    `json:"copy_to,omitempty"`
}

// Response answers a Request. Error is set on failure; otherwise the body
// matching the request's op may be set.
type Response struct {
	Error *Error `json:"error,omitempty"`
	// Workload answers OpWaitWorkload.
	Workload *WorkloadStatus `json:"workload,omitempty"`
	Exec     *ExecStarted    `json:"exec,omitempty"`
	Restored *RestoredResult `json:"restored,omitempty"`
	Ping     *PingResult     `json:"ping,omitempty"`
	Stat     *PathInfo       `json:"stat,omitempty"`
}

// Error codes. The host maps them onto errdefs classes.
const (
	CodeInvalidArgument   = "invalid_argument"
	CodeAlreadyConfigured = "already_configured"
	CodeNotFound          = "not_found"
	CodeNotImplemented    = "not_implemented"
	CodeInternal          = "internal"
)

// Error is a failure reported by the guest.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// ExitCode is set when Configure failed because the workload could not
	// start: 127 (not found), 126 (found but not executable), the shell's
	// convention, so the host can fail the run with it at once.
	ExitCode int `json:"exit_code,omitempty"`
}

func (e *Error) Error() string { return fmt.Sprintf("guest agent: %s (%s)", e.Message, e.Code) }

// ConfigureRequest: sent once per boot; sets the hostname and the network,
// assembles the workload's root filesystem and starts the workload, in
// that order. Without Root the workload runs in the initramfs (the
// built-in busybox guest). Command+Env (the initramfs form) and Process
// are exclusive.
type ConfigureRequest struct {
	Hostname string            `json:"hostname,omitempty"`
	Command  []string          `json:"command,omitempty"`
	Env      map[string]string `json:"env,omitempty"`

	Root    *RootFS        `json:"root,omitempty"`
	Volumes []Volume       `json:"volumes,omitempty"`
	Process *Process       `json:"process,omitempty"`
	Network *NetworkConfig `json:"network,omitempty"`
}

// ExecRequest starts a command. Env entries are added to (and override)
// the agent's default environment.
type ExecRequest struct {
	Command []string          `json:"command"`
	Env     map[string]string `json:"env,omitempty"`
	Cwd     string            `json:"cwd,omitempty"`
	TTY     bool              `json:"tty,omitempty"`
	Rows    uint16            `json:"rows,omitempty"`
	Cols    uint16            `json:"cols,omitempty"`
}

// ExecStarted is the response to OpExec. ID names the exec for OpSignal and
// OpResize. A command that could not start is still "started": its stream
// carries the error text on stderr and MsgExit with code 127.
type ExecStarted struct {
	ID  uint64 `json:"id"`
	Pid int    `json:"pid,omitempty"`
}

// ExitStatus is the payload of MsgExit.
type ExitStatus struct {
	// Code is the exit status, 128+n when killed by signal n (shell
	// convention), 127 when the command could not start.
	Code int `json:"code"`
	// Signal is the name of the killing signal, if any.
	Signal string `json:"signal,omitempty"`
	// StartError is why the command could not start.
	StartError string `json:"start_error,omitempty"`
}

// SignalRequest sends a signal (number) to an exec's process group.
type SignalRequest struct {
	ID     uint64 `json:"id"`
	Signal int    `json:"signal"`
}

// ResizeRequest sets the window size of a TTY exec.
type ResizeRequest struct {
	ID   uint64 `json:"id"`
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// RestoredRequest tells the guest it was restored from a snapshot: step the
// clock, reseed the kernel RNG, maybe take a new identity.
type RestoredRequest struct {
	// UnixNano is the host's wall clock.
	UnixNano int64 `json:"unix_nano"`
	// Entropy is mixed into the kernel RNG and credited (RNDADDENTROPY),
	// then the CRNG is reseeded (RNDRESEEDCRNG).
	Entropy []byte `json:"entropy,omitempty"`
	// Hostname, when set, replaces the hostname.
	Hostname string `json:"hostname,omitempty"`
	// Network, when set, is the fork's network identity. Reserved: this
	// agent version answers not_implemented (see initd's
	// applyNetworkIdentity hook).
	Network *NetworkIdentity `json:"network,omitempty"`
}

// NetworkIdentity is the network identity a fork takes after restore
// (wave 2). The fields are the intended shape; nothing applies them yet.
type NetworkIdentity struct {
	Interface string   `json:"interface,omitempty"`
	MAC       string   `json:"mac,omitempty"`
	Addresses []string `json:"addresses,omitempty"` // CIDR
	Gateway   string   `json:"gateway,omitempty"`
	DNS       []string `json:"dns,omitempty"`
}

// RestoredResult reports what the guest did.
type RestoredResult struct {
	// ClockStepNanos is how far the clock moved (new - old).
	ClockStepNanos int64 `json:"clock_step_nanos"`
	// EntropyCredited is the number of bits credited by RNDADDENTROPY
	// (0 when no entropy was sent).
	EntropyCredited int `json:"entropy_credited_bits"`
	// Reseeded reports that RNDRESEEDCRNG succeeded.
	Reseeded bool `json:"reseeded"`
	// EntropyAvail is /proc/sys/kernel/random/entropy_avail afterwards.
	EntropyAvail int    `json:"entropy_avail"`
	Hostname     string `json:"hostname"`
}

// PingResult is the response body of OpPing.
type PingResult struct {
	GuestUnixNano int64 `json:"guest_unix_nano"`
}

// Timeouts both sides agree on.
const (
	// HelloRetry is how often the host repeats its Hello until Welcome.
	HelloRetry = 200 * time.Millisecond
)
