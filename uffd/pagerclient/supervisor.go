package pagerclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/uffd/pagerapi"
)

// Config configures a Supervisor. Zero fields take the defaults.
type Config struct {
	// Path is the binary to run (default: this executable) with Args
	// (default: pager --socket SocketPath --state-dir StateDir
	// --cache-bytes CacheBytes) and Env added to this process's.
	Path string
	Args []string
	Env  []string
	// SocketPath is the pager's control socket (required).
	SocketPath string
	// StateDir is the pager's state directory (required).
	StateDir string
	// CacheBytes is the pager's cache budget (0: the pager's default).
	CacheBytes int64
	// LogPath receives the pager's stdout and stderr (appended); default
	// <StateDir>/pager.log. A file, not a pipe: the pager outlives the
	// daemon across daemon restarts.
	LogPath string
	// HealthInterval, HealthTimeout and HealthFailures: a pager that fails
	// HealthFailures probes in a row is killed (and reported).
	HealthInterval time.Duration
	HealthTimeout  time.Duration
	HealthFailures int
	// StartTimeout bounds a start until the first healthy probe.
	StartTimeout time.Duration
	// RestartBackoff is the first delay between restart attempts; it
	// doubles up to MaxRestartBackoff.
	RestartBackoff    time.Duration
	MaxRestartBackoff time.Duration
	// OnLost is called, from the supervisor's goroutine, each time a pager
	// process ends, with the sessions whose VMs needed it. Those VMs will
	// hang on their next missing page: the daemon kills them. It must not
	// block for long; the restart waits for it.
	OnLost func(Lost)
	// OnFailed is called, from the supervisor's goroutine, for each
	// tracked session the pager reports failed (bad handshake, or a fault
	// loop error while serving). Its VM, if its VMM connected, will hang on
	// its next missing page: the daemon kills it. Optional.
	OnFailed func(pagerapi.Session)
	Logger   *slog.Logger
}

// Lost reports a pager that ended.
type Lost struct {
	PID int
	// Err says how it ended: exit status, or why the supervisor killed it.
	Err error
	// Sessions are the ids of the sessions created through the supervisor
	// that were waiting or serving at last sight, sorted. The list may name
	// a session that detached or failed just before the end; it never
	// misses one that needed the pager.
	Sessions []string
}

func (c Config) withDefaults() (Config, error) {
	if c.SocketPath == "" || c.StateDir == "" {
		return c, fmt.Errorf("pagerclient: SocketPath and StateDir are required: %w", errdefs.ErrInvalidArgument)
	}
	if c.Path == "" {
		exe, err := os.Executable()
		if err != nil {
			return c, fmt.Errorf("pagerclient: find own executable: %w", err)
		}
		c.Path = exe
	}
	if c.Args == nil {
		c.Args = []string{"pager", "--socket", c.SocketPath, "--state-dir", c.StateDir}
		if c.CacheBytes > 0 {
			c.Args = append(c.Args, "--cache-bytes", strconv.FormatInt(c.CacheBytes, 10))
		}
	}
	if c.LogPath == "" {
		c.LogPath = filepath.Join(c.StateDir, "pager.log")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.HealthInterval, time.Second)
	def(&c.HealthTimeout, 2*time.Second)
	def(&c.StartTimeout, 10*time.Second)
	def(&c.RestartBackoff, 200*time.Millisecond)
	def(&c.MaxRestartBackoff, 5*time.Second)
	if c.HealthFailures == 0 {
		c.HealthFailures = 3
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// Supervisor runs the pager as a child process (or adopts one already
// serving the socket), probes its health, restarts it when it ends, and
// reports which sessions each dead pager took with it.
//
// Lifecycle: NewSupervisor → Start → CreateSession/CloseSession (through
// the supervisor, so it knows which VMs depend on the pager) → Close
// (stop supervising, leave the pager serving its VMs: a daemon restart
// adopts it) or Shutdown (stop the pager too).
type Supervisor struct {
	cfg    Config
	log    *slog.Logger
	client *Client

	mu      sync.Mutex
	proc    *proc              // +checklocks:mu; nil while no pager runs
	gen     int                // +checklocks:mu; incarnation counter
	tracked map[string]tracked // +checklocks:mu
	started bool               // +checklocks:mu
	// seq stamps every tracked entry: a refresh prunes only entries
	// stamped before it listed the pager's sessions, never one a create
	// finished while the list was in flight.
	seq uint64 // +checklocks:mu

	stop chan struct{} // closed by Close/Shutdown
	once sync.Once
	wg   sync.WaitGroup // the monitor goroutine
}

type tracked struct {
	gen      int
	state    pagerapi.SessionState
	creating bool   // a create is in flight; Refresh must not drop it
	seq      uint64 // Supervisor.seq when the entry was last written
}

// proc is one pager process.
type proc struct {
	pid     int
	gen     int
	adopted bool
	exited  chan struct{} // closed when the process is gone
	exitErr error         // written before exited is closed
	signal  func(syscall.Signal) error
	release func() // stops watching (adopted: closes the pidfd)

	mu     sync.Mutex
	reason error // why the supervisor killed it, if it did
}

func (p *proc) killFor(reason error) {
	p.mu.Lock()
	if p.reason == nil {
		p.reason = reason
	}
	p.mu.Unlock()
	p.signal(syscall.SIGKILL)
}

func (p *proc) endErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reason != nil {
		return p.reason
	}
	return p.exitErr
}

// NewSupervisor checks the configuration; Start runs the pager.
func NewSupervisor(cfg Config) (*Supervisor, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Supervisor{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "pager-supervisor"),
		client:  New(cfg.SocketPath),
		tracked: map[string]tracked{},
		stop:    make(chan struct{}),
	}, nil
}

// Client is the control API client (for reads; create and close sessions
// through the Supervisor).
func (s *Supervisor) Client() *Client { return s.client }

// PID is the running pager's pid, 0 while none runs.
func (s *Supervisor) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.pid
}

// Start adopts a pager already serving the socket (left by a previous
// daemon; its live sessions become tracked) or starts one, waits until it
// is healthy, and begins supervising.
func (s *Supervisor) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return fmt.Errorf("pagerclient: supervisor already started: %w", errdefs.ErrInvalidState)
	}
	s.started = true
	s.mu.Unlock()
	p, err := s.adoptRunning(ctx)
	if err == nil && p == nil {
		p, err = s.launch(ctx)
	}
	if err != nil {
		return err
	}
	s.wg.Add(1)
	go s.monitor(p)
	return nil
}

func (s *Supervisor) nextGen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	return s.gen
}

// adoptRunning adopts a healthy pager on the socket; (nil, nil) if none.
func (s *Supervisor) adoptRunning(ctx context.Context) (*proc, error) {
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HealthTimeout)
	defer cancel()
	h, err := s.client.Health(hctx)
	if err != nil {
		return nil, nil
	}
	p, err := adopt(h.PID)
	if err != nil {
		return nil, fmt.Errorf("pagerclient: adopt pager pid %d: %w", h.PID, err)
	}
	p.gen = s.nextGen()
	sessions, err := s.client.Sessions(hctx)
	if err != nil {
		p.release()
		return nil, fmt.Errorf("pagerclient: adopt pager pid %d: %w", h.PID, err)
	}
	s.mu.Lock()
	s.proc = p
	for _, ss := range sessions {
		if ss.State.NeedsPager() {
			s.tracked[ss.ID] = tracked{gen: p.gen, state: ss.State}
		}
	}
	s.mu.Unlock()
	s.log.Info("adopted running pager", "pid", p.pid, "live_sessions", len(sessions))
	return p, nil
}

// launch starts a pager process and waits for its first healthy probe.
func (s *Supervisor) launch(ctx context.Context) (*proc, error) {
	if err := os.MkdirAll(s.cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("pagerclient: state dir: %w", err)
	}
	logf, err := os.OpenFile(s.cfg.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pagerclient: pager log: %w", err)
	}
	defer logf.Close()
	// Not CommandContext: the pager must outlive the request that starts it.
	cmd := exec.Command(s.cfg.Path, s.cfg.Args...)
	cmd.Env = append(os.Environ(), s.cfg.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own session: signals to the daemon's process group (a terminal's
	// Ctrl-C) must not take down the VMs' pager.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("pagerclient: start pager: %w", err)
	}
	p := &proc{
		pid:     cmd.Process.Pid,
		gen:     s.nextGen(),
		exited:  make(chan struct{}),
		signal:  func(sig syscall.Signal) error { return cmd.Process.Signal(sig) },
		release: func() {},
	}
	// The reaper: it ends when the child does (its owner is the child's
	// lifetime, which may exceed the supervisor's after Close).
	go func() {
		err := cmd.Wait()
		if err == nil {
			err = errors.New("exited with status 0")
		}
		p.exitErr = err
		close(p.exited)
	}()
	if err := s.waitHealthy(ctx, p); err != nil {
		p.killFor(err)
		<-p.exited
		return nil, fmt.Errorf("pagerclient: pager pid %d did not become healthy (log: %s): %w", p.pid, s.cfg.LogPath, err)
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	s.log.Info("pager started", "pid", p.pid, "socket", s.cfg.SocketPath)
	return p, nil
}

func (s *Supervisor) waitHealthy(ctx context.Context, p *proc) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.StartTimeout)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		h, err := s.client.Health(ctx)
		if err == nil && h.PID == p.pid {
			return nil
		}
		if err == nil {
			return fmt.Errorf("another pager (pid %d) answers on %s: %w", h.PID, s.cfg.SocketPath, errdefs.ErrConflict)
		}
		select {
		case <-p.exited:
			return fmt.Errorf("exited during start: %w", p.exitErr)
		case <-ctx.Done():
			return fmt.Errorf("no healthy answer: %w: %w", err, ctx.Err())
		case <-t.C:
		}
	}
}

// monitor probes the pager, reports its end and restarts it.
func (s *Supervisor) monitor(p *proc) {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.HealthInterval)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-s.stop:
			return
		case <-p.exited:
			s.reportEnd(p)
			if p = s.restart(); p == nil {
				return
			}
			failures = 0
		case <-t.C:
			if err := s.probe(p); err != nil {
				failures++
				s.log.Warn("pager health probe failed", "pid", p.pid, "failures", failures, "err", err)
				if failures >= s.cfg.HealthFailures {
					p.killFor(fmt.Errorf("unresponsive: %d health probes failed, last: %w", failures, err))
				}
				continue
			}
			failures = 0
		}
	}
}

// probe checks health and refreshes the tracked session states.
func (s *Supervisor) probe(p *proc) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HealthTimeout)
	defer cancel()
	h, err := s.client.Health(ctx)
	if err != nil {
		return err
	}
	if h.PID != p.pid {
		return fmt.Errorf("pid %d answers on %s, supervised pid is %d", h.PID, s.cfg.SocketPath, p.pid)
	}
	return s.refresh(ctx, p.gen)
}

// Refresh updates the tracked session states from the pager now, so that a
// session that detached or ended is not reported if the pager dies next.
func (s *Supervisor) Refresh(ctx context.Context) error {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		return fmt.Errorf("pagerclient: no pager running: %w", errdefs.ErrUnavailable)
	}
	return s.refresh(ctx, p.gen)
}

func (s *Supervisor) refresh(ctx context.Context, gen int) error {
	s.mu.Lock()
	listedAt := s.seq
	s.mu.Unlock()
	list, err := s.client.Sessions(ctx)
	if err != nil {
		return err
	}
	byID := make(map[string]pagerapi.Session, len(list))
	for _, ss := range list {
		byID[ss.ID] = ss
	}
	var failed []pagerapi.Session
	s.mu.Lock()
	for id, t := range s.tracked {
		if t.gen != gen || t.creating || t.seq > listedAt {
			continue // another incarnation's, or newer than the list
		}
		ss, ok := byID[id]
		if ss.State == pagerapi.StateFailed {
			failed = append(failed, ss)
		}
		if !ok || !ss.State.NeedsPager() {
			delete(s.tracked, id) // ended or forgotten: its VM does not need this pager
			continue
		}
		t.state = ss.State
		s.tracked[id] = t
	}
	s.mu.Unlock()
	for _, ss := range failed {
		s.log.Error("pager session failed", "session", ss.ID, "err", ss.Error)
		if s.cfg.OnFailed != nil {
			s.cfg.OnFailed(ss)
		}
	}
	return nil
}

// reportEnd tells OnLost which sessions died with p.
func (s *Supervisor) reportEnd(p *proc) {
	p.release()
	s.mu.Lock()
	var lost []string
	for id, t := range s.tracked {
		if t.gen == p.gen {
			lost = append(lost, id)
			delete(s.tracked, id)
		}
	}
	if s.proc == p {
		s.proc = nil
	}
	s.mu.Unlock()
	sort.Strings(lost)
	err := p.endErr()
	if len(lost) > 0 {
		s.log.Error("pager ended; its sessions' VMs will hang on their next missing page",
			"pid", p.pid, "err", err, "lost_sessions", lost)
	} else {
		s.log.Warn("pager ended; no session needed it", "pid", p.pid, "err", err)
	}
	if s.cfg.OnLost != nil {
		s.cfg.OnLost(Lost{PID: p.pid, Err: err, Sessions: lost})
	}
}

// restart starts a new pager, backing off between attempts, until one is
// healthy or the supervisor stops (nil).
func (s *Supervisor) restart() *proc {
	delay := s.cfg.RestartBackoff
	for {
		select {
		case <-s.stop:
			return nil
		case <-time.After(delay):
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() { // ends with ctx, at the latest when launch returns
			select {
			case <-s.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		p, err := s.launch(ctx)
		cancel()
		if err == nil {
			return p
		}
		s.log.Error("pager restart failed", "err", err, "retry_in", delay)
		delay = min(2*delay, s.cfg.MaxRestartBackoff)
	}
}

// CreateSession creates a session through the pager and tracks it, so
// that the pager's death reports it.
func (s *Supervisor) CreateSession(ctx context.Context, req pagerapi.CreateSessionRequest) (pagerapi.Session, error) {
	s.mu.Lock()
	p := s.proc
	if p == nil {
		s.mu.Unlock()
		return pagerapi.Session{}, fmt.Errorf("pagerclient: no pager running (restarting): %w", errdefs.ErrUnavailable)
	}
	prev, had := s.tracked[req.ID]
	if had && prev.gen == p.gen && prev.state.NeedsPager() {
		s.mu.Unlock()
		return pagerapi.Session{}, fmt.Errorf("pagerclient: session %q is live: %w", req.ID, errdefs.ErrAlreadyExists)
	}
	// Tracked before the call: a pager dying mid-create reports it.
	s.seq++
	s.tracked[req.ID] = tracked{gen: p.gen, state: pagerapi.StateWaiting, creating: true, seq: s.seq}
	s.mu.Unlock()

	info, err := s.client.CreateSession(ctx, req)
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, still := s.tracked[req.ID]
	switch {
	case !still || cur.gen != p.gen:
		// The pager ended meanwhile and reportEnd took the entry.
	case err != nil:
		delete(s.tracked, req.ID)
	default:
		s.seq++
		s.tracked[req.ID] = tracked{gen: p.gen, state: info.State, seq: s.seq}
	}
	return info, err
}

// CloseSession closes a session and stops tracking it. ErrNotFound from
// the pager is returned but the session is untracked all the same.
func (s *Supervisor) CloseSession(ctx context.Context, id string) error {
	err := s.client.CloseSession(ctx, id)
	if err == nil || errdefs.IsNotFound(err) {
		s.mu.Lock()
		delete(s.tracked, id)
		s.mu.Unlock()
	}
	return err
}

// Close stops supervising and leaves the pager running for the VMs that
// use it; a later Start (a restarted daemon) adopts it.
func (s *Supervisor) Close() error {
	s.once.Do(func() { close(s.stop) })
	s.wg.Wait()
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p != nil {
		p.release()
	}
	return nil
}

// Shutdown stops supervising and terminates the pager (SIGTERM, then
// SIGKILL when ctx ends), reporting its live sessions through OnLost.
func (s *Supervisor) Shutdown(ctx context.Context) error {
	s.once.Do(func() { close(s.stop) })
	s.wg.Wait()
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	p.signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-ctx.Done():
		p.killFor(fmt.Errorf("did not stop on SIGTERM: %w", ctx.Err()))
		<-p.exited
	}
	s.reportEnd(p)
	return nil
}
