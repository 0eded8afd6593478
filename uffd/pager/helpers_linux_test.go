//go:build linux

package pager

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zygote/zygote/uffd/internal/harness"
	"github.com/zygote/zygote/uffd/pagerapi"
)

func TestMain(m *testing.M) {
	harness.Main() // the re-executed harness process never returns from here
	os.Exit(m.Run())
}

func requireUFFD(tb testing.TB) { tb.Helper(); harness.Require(tb) }

// pattern is the content of test memory files: every 8-byte word encodes
// its offset and a seed, so no page equals another, none is zero, and a
// changed seed changes every byte.
func pattern(off int64, seed uint64) uint64 {
	x := (uint64(off) + seed*0x632be59bd9b4e019) * 0x9e3779b97f4a7c15
	x ^= x >> 29
	return x | 1<<63
}

// writeMemFile writes size bytes of pattern(seed) to path.
func writeMemFile(tb testing.TB, path string, size int64, seed uint64) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		for i := int64(0); i < n; i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], pattern(off+i, seed))
		}
		if _, err := f.Write(buf[:n]); err != nil {
			tb.Fatal(err)
		}
	}
}

func newMemFile(tb testing.TB, size int64, seed uint64) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "memory")
	writeMemFile(tb, path, size, seed)
	return path
}

func testLogger(tb testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newServer(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = tb.TempDir()
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = filepath.Join(cfg.StateDir, "pager.sock")
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(tb)
	}
	s, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func ctxFor(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

func createSession(tb testing.TB, s *Server, req pagerapi.CreateSessionRequest) pagerapi.Session {
	tb.Helper()
	info, err := s.CreateSession(context.Background(), req)
	if err != nil {
		tb.Fatalf("create session %q: %v", req.ID, err)
	}
	return info
}

// startHarness launches a harness against sess; it is killed at cleanup.
func startHarness(tb testing.TB, sess pagerapi.Session, cfg harness.Config) *harness.Proc {
	tb.Helper()
	cfg.Socket = sess.SocketPath
	if cfg.MemoryFile == "" {
		cfg.MemoryFile = sess.MemoryPath
	}
	p, err := harness.Start(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Kill)
	return p
}

// runHarness runs a harness to completion and requires every byte right.
func runHarness(tb testing.TB, sess pagerapi.Session, cfg harness.Config) harness.Result {
	tb.Helper()
	p := startHarness(tb, sess, cfg)
	res, err := p.Result(ctxFor(tb, 60*time.Second))
	if err != nil {
		tb.Fatal(err)
	}
	if res.Mismatches != 0 {
		tb.Fatalf("%d pages wrong; first: %s", res.Mismatches, res.FirstProblem)
	}
	return res
}

// waitState polls a session until it reaches want (or the test's deadline).
func waitState(tb testing.TB, s *Server, id string, want pagerapi.SessionState) pagerapi.Session {
	tb.Helper()
	ctx := ctxFor(tb, 30*time.Second)
	for {
		info, err := s.Session(id)
		if err != nil {
			tb.Fatal(err)
		}
		if info.State == want {
			return info
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("session %s: state %s (error %q), want %s", id, info.State, info.Error, want)
		case <-time.After(5 * time.Millisecond):
		}
	}
}
