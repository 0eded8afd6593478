package pagerapi

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/zygote/zygote/errdefs"
)

// Paths.
const (
	PathHealth   = "/v1/health"
	PathSessions = "/v1/sessions"
	PathStats    = "/v1/stats"
	PathMetrics  = "/metrics"
)

// SessionPath is the path of one session.
func SessionPath(id string) string { return PathSessions + "/" + id }

// CreateSessionRequest asks the pager to serve one VM restore.
type CreateSessionRequest struct {
	// ID names the session; unique among live sessions; [A-Za-z0-9._-],
	// 1..128 characters. The daemon uses the instance id.
	ID string `json:"id"`
	// MemoryPath is the memory file to serve pages from. The pager opens
	// it at creation and reads that inode for the session's life.
	MemoryPath string `json:"memory_path"`
	// CacheKey names the file's content: sessions with equal keys share
	// cached pages and the recorded working set. It must change whenever
	// the content may change.
	CacheKey string `json:"cache_key"`
	// SocketPath, if set, is where the session socket is created (e.g.
	// inside a jail); default <state-dir>/sessions/<id>.sock.
	SocketPath string `json:"socket_path,omitempty"`
	// NoPrefetch turns off streaming the recorded working set.
	NoPrefetch bool `json:"no_prefetch,omitempty"`
	// PopulateAll streams every page after the working set, then
	// unregisters the ranges: the session becomes Detached and the VM no
	// longer depends on the pager.
	PopulateAll bool `json:"populate_all,omitempty"`
	// NoRecord turns off recording this session's fault order.
	NoRecord bool `json:"no_record,omitempty"`
	// PageOnly serves only the faulting page, without its 2 MiB
	// neighbourhood (benchmarks, debugging).
	PageOnly bool `json:"page_only,omitempty"`
	// HandshakeTimeoutMS bounds the wait for the VMM's connection and
	// handshake; 0 means the pager's default.
	HandshakeTimeoutMS int64 `json:"handshake_timeout_ms,omitempty"`
}

// SessionState is where a session is in its life.
type SessionState string

// The states. Waiting and Serving sessions need the pager: if it dies, the
// VM hangs on its next missing page. The others are terminal.
const (
	// StateWaiting: the socket exists, no valid handshake yet.
	StateWaiting SessionState = "waiting"
	// StateServing: the fault loop runs.
	StateServing SessionState = "serving"
	// StateDetached: every page was populated and the ranges unregistered;
	// the VM runs on without the pager.
	StateDetached SessionState = "detached"
	// StateExited: the VMM process exited; the session released everything.
	StateExited SessionState = "exited"
	// StateFailed: the handshake was malformed or timed out, or the fault
	// loop hit an unrecoverable error; Error says which.
	StateFailed SessionState = "failed"
)

// NeedsPager reports whether a VM in this session state depends on the
// pager process staying alive.
func (s SessionState) NeedsPager() bool { return s == StateWaiting || s == StateServing }

// Terminal reports whether the session has ended.
func (s SessionState) Terminal() bool { return !s.NeedsPager() }

// Region is one validated handshake mapping.
type Region struct {
	BaseHostVirtAddr uint64 `json:"base_host_virt_addr"`
	Size             uint64 `json:"size"`
	Offset           uint64 `json:"offset"`
	PageSize         uint64 `json:"page_size"`
}

// Session describes one session.
type Session struct {
	ID         string       `json:"id"`
	CacheKey   string       `json:"cache_key"`
	MemoryPath string       `json:"memory_path"`
	SocketPath string       `json:"socket_path"`
	State      SessionState `json:"state"`
	// Error explains StateFailed (and an unusual end of other states).
	Error     string       `json:"error,omitempty"`
	PeerPID   int          `json:"peer_pid,omitempty"`
	Regions   []Region     `json:"regions,omitempty"`
	CreatedAt time.Time    `json:"created_at"`
	Stats     SessionStats `json:"stats"`
}

// SessionStats counts one session's work.
type SessionStats struct {
	Faults          uint64 `json:"faults"`            // page-fault messages served
	FaultPages      uint64 `json:"fault_pages"`       // pages placed for the faulting address itself
	AroundPages     uint64 `json:"around_pages"`      // neighbourhood pages placed after a fault
	PrefetchPages   uint64 `json:"prefetch_pages"`    // pages placed by prefetch / populate-all
	ZeroPages       uint64 `json:"zero_pages"`        // zero pages placed for removed ranges
	RemoveEvents    uint64 `json:"remove_events"`     // REMOVE/UNMAP events applied
	Exists          uint64 `json:"exists"`            // EEXIST answered with WAKE
	Requeues        uint64 `json:"requeues"`          // EAGAIN: fault requeued
	CacheHits       uint64 `json:"cache_hits"`        // chunk lookups served from the cache
	CacheMisses     uint64 `json:"cache_misses"`      // chunk lookups read from the file
	BytesCopied     uint64 `json:"bytes_copied"`      // bytes placed with UFFDIO_COPY
	WorkingSetPages int    `json:"working_set_pages"` // pages in the replayed working set
	// WorkingSetMS is the time from handshake until the recorded working
	// set (its pages, then their chunks) was placed.
	WorkingSetMS float64 `json:"working_set_ms,omitempty"`
	// PopulatedMS is the time from handshake to detach (populate-all).
	PopulatedMS float64 `json:"populated_ms,omitempty"`
}

// CacheStats describes the shared page cache.
type CacheStats struct {
	BudgetBytes   int64  `json:"budget_bytes"`
	UsedBytes     int64  `json:"used_bytes"`
	Entries       int    `json:"entries"`
	ChunkBytes    int64  `json:"chunk_bytes"`
	Hits          uint64 `json:"hits"`
	Misses        uint64 `json:"misses"`
	Evictions     uint64 `json:"evictions"`
	DiskReadBytes uint64 `json:"disk_read_bytes"`
}

// Stats is the pager's whole state.
type Stats struct {
	Cache    CacheStats `json:"cache"`
	Sessions []Session  `json:"sessions"`
}

// Health answers GET /v1/health.
type Health struct {
	Status    string    `json:"status"` // "ok"
	PID       int       `json:"pid"`
	StartedAt time.Time `json:"started_at"`
	Sessions  int       `json:"sessions"`
	// Features are the userfaultfd features the kernel offers.
	Features []string `json:"features,omitempty"`
}

// Error is the body of every error response.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// The error codes and their classes and statuses.
var codes = []struct {
	code   string
	class  error
	status int
}{
	{"invalid_argument", errdefs.ErrInvalidArgument, http.StatusBadRequest},
	{"not_found", errdefs.ErrNotFound, http.StatusNotFound},
	{"already_exists", errdefs.ErrAlreadyExists, http.StatusConflict},
	{"invalid_state", errdefs.ErrInvalidState, http.StatusConflict},
	{"conflict", errdefs.ErrConflict, http.StatusConflict},
	{"not_implemented", errdefs.ErrNotImplemented, http.StatusNotImplemented},
	{"unavailable", errdefs.ErrUnavailable, http.StatusServiceUnavailable},
	{"resource_exhausted", errdefs.ErrResourceExhausted, http.StatusInsufficientStorage},
}

// ErrorFor classifies err for the wire.
func ErrorFor(err error) (int, Error) {
	for _, c := range codes {
		if errors.Is(err, c.class) {
			return c.status, Error{Code: c.code, Message: err.Error()}
		}
	}
	return http.StatusInternalServerError, Error{Code: "internal", Message: err.Error()}
}

// Err turns a wire error back into an error of its class: errors.Is
// matches the class, and the text is the pager's message.
func (e Error) Err() error {
	for _, c := range codes {
		if c.code == e.Code {
			return &wireError{msg: e.Message, class: c.class}
		}
	}
	return fmt.Errorf("pager: %s (%s)", e.Message, e.Code)
}

type wireError struct {
	msg   string
	class error
}

func (w *wireError) Error() string { return w.msg }
func (w *wireError) Unwrap() error { return w.class }
