package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/zygote/zygote/uffd/pager"
)

// newPagerCmd is `zygote pager`: the userfaultfd page server the daemon
// supervises. Operators rarely run it by hand; see docs/pager.md.
func newPagerCmd() *cobra.Command {
	pagerEnv := func(name, def string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return def
	}
	cacheDefault, err := strconv.ParseInt(pagerEnv("ZYGOTE_PAGER_CACHE_BYTES", strconv.Itoa(pager.DefaultCacheBytes)), 10, 64)
	if err != nil {
		cacheDefault = pager.DefaultCacheBytes
	}
	var (
		cfg       pager.Config
		logLevel  string
		logFormat string
	)
	cmd := &cobra.Command{
		Use:   "pager",
		Short: "Serve guest-memory page faults over userfaultfd (run by the daemon)",
		Long: `The pager serves lazy restores: a VMM (Firecracker, mem_backend Uffd) connects
to a session socket, hands over its userfaultfd, and the pager fills guest
pages from the memory file through a page cache shared by every session with
the same cache key. With serve --pager the daemon starts and supervises it (off by default: no driver uses it yet); see docs/pager.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			opts := &slog.HandlerOptions{Level: lvl}
			var h slog.Handler = slog.NewJSONHandler(os.Stderr, opts)
			if logFormat == "text" {
				h = slog.NewTextHandler(os.Stderr, opts)
			}
			cfg.Logger = slog.New(h).With("component", "pager", "pid", os.Getpid())
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return pager.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.SocketPath, "socket", pagerEnv("ZYGOTE_PAGER_SOCKET", pager.DefaultSocketPath), "control API socket (env ZYGOTE_PAGER_SOCKET)")
	f.StringVar(&cfg.StateDir, "state-dir", pagerEnv("ZYGOTE_PAGER_STATE_DIR", pager.DefaultStateDir), "session sockets and recorded working sets (env ZYGOTE_PAGER_STATE_DIR)")
	f.Int64Var(&cfg.CacheBytes, "cache-bytes", cacheDefault, "shared page cache budget in bytes; negative disables sharing (env ZYGOTE_PAGER_CACHE_BYTES)")
	f.DurationVar(&cfg.HandshakeTimeout, "handshake-timeout", pager.DefaultHandshakeTimeout, "how long a session waits for its VMM")
	f.DurationVar(&cfg.RecordWindow, "record-window", pager.DefaultRecordWindow, "how long after a first restore's handshake its fault order is recorded")
	f.DurationVar(&cfg.TerminalTTL, "ended-session-ttl", pager.DefaultTerminalTTL, "how long ended sessions stay listed")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "json", "json or text")
	return cmd
}
