//go:build linux

package pagerclient

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/uffd/internal/harness"
	"github.com/zygote/zygote/uffd/pager"
	"github.com/zygote/zygote/uffd/pagerapi"
)

const envPagerChild = "ZYGOTE_TEST_PAGER_CHILD"

// TestMain doubles as the two processes the tests need: the harness (the
// VMM) and the pager (what `zygote pager` runs, same flags).
func TestMain(m *testing.M) {
	harness.Main()
	if os.Getenv(envPagerChild) == "1" {
		os.Exit(pagerChild(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func pagerChild(args []string) int {
	if len(args) == 0 || args[0] != "pager" {
		fmt.Fprintln(os.Stderr, "want: pager --socket S --state-dir D")
		return 2
	}
	fs := flag.NewFlagSet("pager", flag.ContinueOnError)
	var cfg pager.Config
	fs.StringVar(&cfg.SocketPath, "socket", "", "")
	fs.StringVar(&cfg.StateDir, "state-dir", "", "")
	fs.Int64Var(&cfg.CacheBytes, "cache-bytes", 0, "")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := pager.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func requireUFFD(tb testing.TB) { tb.Helper(); harness.Require(tb) }

func memFile(t *testing.T, size int) string {
	path := filepath.Join(t.TempDir(), "memory")
	b := make([]byte, size)
	for i := 0; i < size; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], uint64(i)*0x9e3779b97f4a7c15|1<<63)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// testSupervisor returns a supervisor config whose pager is this test
// binary re-executed; lost receives every OnLost report.
func testSupervisor(t *testing.T) (Config, chan Lost) {
	dir := t.TempDir()
	lost := make(chan Lost, 4)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return Config{
		Env:            []string{envPagerChild + "=1"},
		SocketPath:     filepath.Join(dir, "pager.sock"),
		StateDir:       filepath.Join(dir, "state"),
		HealthInterval: 50 * time.Millisecond,
		HealthTimeout:  500 * time.Millisecond,
		RestartBackoff: 10 * time.Millisecond,
		OnLost:         func(l Lost) { lost <- l },
		Logger:         logger,
	}, lost
}

func start(t *testing.T, cfg Config) *Supervisor {
	t.Helper()
	s, err := NewSupervisor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctxFor(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(ctxFor(t, 10*time.Second)) })
	return s
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func nextLost(t *testing.T, lost chan Lost) Lost {
	t.Helper()
	select {
	case l := <-lost:
		return l
	case <-ctxFor(t, 30*time.Second).Done():
		t.Fatal("no OnLost report")
		return Lost{}
	}
}

// waitNewPager waits until the supervisor runs a healthy pager other than old.
func waitNewPager(t *testing.T, s *Supervisor, old int) int {
	t.Helper()
	ctx := ctxFor(t, 30*time.Second)
	for {
		if pid := s.PID(); pid != 0 && pid != old {
			if h, err := s.Client().Health(ctx); err == nil && h.PID == pid {
				return pid
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no new pager after pid %d", old)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestClientErrors(t *testing.T) {
	requireUFFD(t)
	cfg, _ := testSupervisor(t)
	s := start(t, cfg)
	ctx := ctxFor(t, 30*time.Second)
	mem := memFile(t, 1<<20)
	if _, err := s.CreateSession(ctx, pagerapi.CreateSessionRequest{ID: "a", MemoryPath: mem, CacheKey: "k"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		err  error
		is   func(error) bool
	}{
		{"duplicate id", func() error {
			_, err := s.Client().CreateSession(ctx, pagerapi.CreateSessionRequest{ID: "a", MemoryPath: mem, CacheKey: "k"})
			return err
		}(), errdefs.IsAlreadyExists},
		{"bad id", func() error {
			_, err := s.CreateSession(ctx, pagerapi.CreateSessionRequest{ID: "a/b", MemoryPath: mem, CacheKey: "k"})
			return err
		}(), errdefs.IsInvalidArgument},
		{"missing memory file", func() error {
			_, err := s.CreateSession(ctx, pagerapi.CreateSessionRequest{ID: "b", MemoryPath: mem + ".nope", CacheKey: "k"})
			return err
		}(), errdefs.IsNotFound},
		{"key names other content", func() error {
			_, err := s.CreateSession(ctx, pagerapi.CreateSessionRequest{ID: "c", MemoryPath: memFile(t, 2<<20), CacheKey: "k"})
			return err
		}(), errdefs.IsConflict},
		{"unknown session", s.CloseSession(ctx, "zz"), errdefs.IsNotFound},
		{"pager unreachable", func() error {
			_, err := New(filepath.Join(t.TempDir(), "none.sock")).Health(ctx)
			return err
		}(), errdefs.IsUnavailable},
	} {
		if tc.err == nil || !tc.is(tc.err) {
			t.Errorf("%s: err = %v, wrong class", tc.name, tc.err)
		}
	}
	metrics, err := s.Client().Metrics(ctx)
	if err != nil || !strings.Contains(metrics, `zygote_pager_sessions{state="waiting"} 1`) {
		t.Fatalf("metrics %v:\n%s", err, metrics)
	}
	if err := s.CloseSession(ctx, "a"); err != nil {
		t.Fatal(err)
	}
}

// TestPagerKilledMidRun: SIGKILL the pager while a VM is faulting, another
// waits for its VMM and a third has finished. The supervisor reports the
// first two, restarts the pager, and new sessions work.
func TestPagerKilledMidRun(t *testing.T) {
	requireUFFD(t)
	cfg, lost := testSupervisor(t)
	s := start(t, cfg)
	ctx := ctxFor(t, 60*time.Second)
	mem := memFile(t, 8<<20)
	create := func(id string) pagerapi.Session {
		info, err := s.CreateSession(ctx, pagerapi.CreateSessionRequest{ID: id, MemoryPath: mem, CacheKey: "k", PageOnly: true, NoRecord: true})
		if err != nil {
			t.Fatal(err)
		}
		return info
	}
	runVM := func(info pagerapi.Session, h harness.Config) *harness.Proc {
		h.Socket, h.MemoryFile = info.SocketPath, mem
		p, err := harness.Start(h)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Kill)
		return p
	}
	done := runVM(create("finished"), harness.Config{Threads: 2, Order: "random"})
	if res, err := done.Result(ctx); err != nil || res.Mismatches != 0 {
		t.Fatalf("%v %+v", err, res)
	}
	busy := runVM(create("busy"), harness.Config{Threads: 1, Order: "random", HoldAfter: 50})
	if _, err := busy.Next(ctx, "holding"); err != nil {
		t.Fatal(err)
	}
	create("waiting")
	for { // the pager noticed "finished"'s VMM exit, and the supervisor saw that
		if info, err := s.Client().Session(ctx, "finished"); err == nil && info.State == pagerapi.StateExited {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.Refresh(ctx); err != nil {
		t.Fatal(err)
	}

	old := s.PID()
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	l := nextLost(t, lost)
	if l.PID != old || !slices.Equal(l.Sessions, []string{"busy", "waiting"}) {
		t.Fatalf("lost report %+v, want pid %d sessions [busy waiting]", l, old)
	}
	if l.Err == nil || !strings.Contains(l.Err.Error(), "killed") {
		t.Fatalf("lost error %v", l.Err)
	}
	busy.Kill() // what the daemon does with a lost session's VM

	waitNewPager(t, s, old)
	after := runVM(create("after"), harness.Config{Threads: 2, Order: "seq"})
	if res, err := after.Result(ctx); err != nil || res.Mismatches != 0 || res.Checked != 2048 {
		t.Fatalf("session on the restarted pager: %v %+v", err, res)
	}
}

// TestUnresponsivePagerKilled: a stopped (SIGSTOP) pager fails its health
// probes; the supervisor kills it, reports its sessions and restarts it.
func TestUnresponsivePagerKilled(t *testing.T) {
	requireUFFD(t)
	cfg, lost := testSupervisor(t)
	cfg.HealthTimeout = 100 * time.Millisecond
	s := start(t, cfg)
	ctx := ctxFor(t, 30*time.Second)
	if _, err := s.CreateSession(ctx, pagerapi.CreateSessionRequest{ID: "vm", MemoryPath: memFile(t, 1<<20), CacheKey: "k"}); err != nil {
		t.Fatal(err)
	}
	old := s.PID()
	if err := syscall.Kill(old, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	l := nextLost(t, lost)
	if l.PID != old || !slices.Equal(l.Sessions, []string{"vm"}) || !strings.Contains(l.Err.Error(), "unresponsive") {
		t.Fatalf("lost report %+v", l)
	}
	waitNewPager(t, s, old)
}

// TestFailedSessionReported: a session whose handshake fails is reported
// through OnFailed once, and is no longer tracked as needing the pager.
func TestFailedSessionReported(t *testing.T) {
	requireUFFD(t)
	cfg, lost := testSupervisor(t)
	failed := make(chan pagerapi.Session, 4)
	cfg.OnFailed = func(ss pagerapi.Session) { failed <- ss }
	s := start(t, cfg)
	ctx := ctxFor(t, 30*time.Second)
	mem := memFile(t, 1<<20)
	info, err := s.CreateSession(ctx, pagerapi.CreateSessionRequest{ID: "bad", MemoryPath: mem, CacheKey: "k", HandshakeTimeoutMS: 50})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client().WaitHandshake(ctx, "bad"); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "no VMM connected") {
		t.Fatalf("WaitHandshake = %v", err)
	}
	select {
	case ss := <-failed:
		if ss.ID != "bad" || ss.SocketPath != info.SocketPath || ss.Error == "" {
			t.Fatalf("OnFailed got %+v", ss)
		}
	case <-ctx.Done():
		t.Fatal("no OnFailed report")
	}
	old := s.PID()
	syscall.Kill(old, syscall.SIGKILL)
	if l := nextLost(t, lost); len(l.Sessions) != 0 {
		t.Fatalf("a failed session was reported lost: %+v", l)
	}
	select {
	case ss := <-failed:
		t.Fatalf("failure reported twice: %+v", ss)
	default:
	}
}

// TestAdoptRunningPager: a daemon restart (Close, new Supervisor) adopts
// the pager with its live sessions instead of starting another.
func TestAdoptRunningPager(t *testing.T) {
	requireUFFD(t)
	cfg, _ := testSupervisor(t)
	first, err := NewSupervisor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 30*time.Second)
	if err := first.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pid := first.PID()
	if _, err := first.CreateSession(ctx, pagerapi.CreateSessionRequest{ID: "vm", MemoryPath: memFile(t, 1<<20), CacheKey: "k"}); err != nil {
		t.Fatal(err)
	}
	first.Close() // the daemon goes away; the pager stays

	cfg2, lost := testSupervisor(t)
	cfg.OnLost = cfg2.OnLost
	second := start(t, cfg)
	if second.PID() != pid {
		t.Fatalf("second supervisor runs pid %d, want the adopted %d", second.PID(), pid)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if l := nextLost(t, lost); l.PID != pid || !slices.Equal(l.Sessions, []string{"vm"}) {
		t.Fatalf("lost report %+v", l)
	}
	waitNewPager(t, second, pid)
}

// TestRefreshNeverDropsANewSession: a refresh whose session list was taken
// before a create finished must not forget that session, or the pager's
// death would not report it (its VM would hang unnoticed).
func TestRefreshNeverDropsANewSession(t *testing.T) {
	requireUFFD(t)
	cfg, lost := testSupervisor(t)
	s := start(t, cfg)
	ctx := ctxFor(t, 60*time.Second)
	mem := memFile(t, 2<<20)
	stop := make(chan struct{})
	refreshed := make(chan struct{})
	go func() { // refreshes as fast as it can while sessions are created
		defer close(refreshed)
		for {
			select {
			case <-stop:
				return
			default:
				s.Refresh(ctx)
			}
		}
	}()
	var want []string
	for i := 0; i < 40; i++ {
		id := fmt.Sprintf("s%02d", i)
		if _, err := s.CreateSession(ctx, pagerapi.CreateSessionRequest{ID: id, MemoryPath: mem, CacheKey: "k", NoRecord: true}); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	close(stop)
	<-refreshed
	old := s.PID()
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if l := nextLost(t, lost); !slices.Equal(l.Sessions, want) {
		t.Fatalf("lost report names %v, want all %d waiting sessions", l.Sessions, len(want))
	}
}
