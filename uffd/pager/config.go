package pager

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/zygote/zygote/errdefs"
)

// Defaults.
const (
	DefaultSocketPath       = "/run/zygote/pager.sock"
	DefaultStateDir         = "/run/zygote/pager"
	DefaultCacheBytes       = 1 << 30
	DefaultChunkBytes       = 2 << 20
	DefaultHandshakeTimeout = 30 * time.Second
	DefaultRecordWindow     = 10 * time.Second
	DefaultTerminalTTL      = time.Hour
)

// Config configures a pager. Zero fields take the defaults.
type Config struct {
	// SocketPath is the control API socket.
	SocketPath string
	// StateDir holds sessions/ (session sockets) and workingsets/
	// (recorded fault orders, one file per cache key; they survive pager
	// restarts if StateDir does).
	StateDir string
	// CacheBytes is the shared page cache's budget (0: the default); a
	// negative value keeps nothing between lookups (no sharing).
	CacheBytes int64
	// ChunkBytes is the cache's unit and the fault neighbourhood: a
	// power of two multiple of the page size (default 2 MiB).
	ChunkBytes int64
	// HandshakeTimeout bounds the wait for a session's VMM.
	HandshakeTimeout time.Duration
	// RecordWindow is how long after the handshake a first restore's
	// fault order is recorded.
	RecordWindow time.Duration
	// TerminalTTL is how long ended sessions stay listed for the daemon
	// to read their outcome.
	TerminalTTL time.Duration
	Logger      *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.SocketPath == "" {
		c.SocketPath = DefaultSocketPath
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.CacheBytes == 0 {
		c.CacheBytes = DefaultCacheBytes
	} else if c.CacheBytes < 0 {
		c.CacheBytes = 0
	}
	if c.ChunkBytes == 0 {
		c.ChunkBytes = DefaultChunkBytes
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.RecordWindow == 0 {
		c.RecordWindow = DefaultRecordWindow
	}
	if c.TerminalTTL == 0 {
		c.TerminalTTL = DefaultTerminalTTL
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	if c.ChunkBytes < 4096 || c.ChunkBytes&(c.ChunkBytes-1) != 0 {
		return fmt.Errorf("pager: chunk bytes %d is not a power of two >= 4096: %w", c.ChunkBytes, errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(c.SocketPath) || !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("pager: socket %q and state dir %q must be absolute: %w", c.SocketPath, c.StateDir, errdefs.ErrInvalidArgument)
	}
	return nil
}

func (c Config) sessionDir() string    { return filepath.Join(c.StateDir, "sessions") }
func (c Config) workingSetDir() string { return filepath.Join(c.StateDir, "workingsets") }
