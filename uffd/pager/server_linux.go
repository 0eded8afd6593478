//go:build linux

package pager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/cleanup"
	"github.com/zygote/zygote/uffd"
	"github.com/zygote/zygote/uffd/pagerapi"
)

// Server is the pager: the session table, the shared cache, the recorded
// working sets and the control API. Serve runs it as a process would;
// tests and benchmarks may also call its methods directly.
type Server struct {
	cfg      Config
	log      *slog.Logger
	cache    *Cache
	ws       *wsStore
	started  time.Time
	features uffd.Features
	total    counters
	hist     histogram

	mu       sync.Mutex
	sessions map[string]*session // +checklocks:mu
	closed   bool                // +checklocks:mu

	wg     sync.WaitGroup // session goroutines and the reaper
	stopCh chan struct{}  // closed by Close: stops the reaper
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// New prepares a pager: it creates the state directories and the cache.
// Serve starts the control API; CreateSession works without it.
func New(cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	for _, d := range []string{cfg.StateDir, cfg.sessionDir(), cfg.workingSetDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("pager: state dir: %w", err)
		}
	}
	cache, err := NewCache(cfg.CacheBytes, cfg.ChunkBytes)
	if err != nil {
		return nil, err
	}
	probe := uffd.Probe()
	if !probe.Available() {
		// The pager only uses descriptors VMMs send it; note why creating one fails here.
		cfg.Logger.Warn("this process cannot create a userfaultfd (not needed to serve received ones)", "err", probe.Err())
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		cache:    cache,
		ws:       &wsStore{dir: cfg.workingSetDir(), log: cfg.Logger},
		started:  time.Now(),
		features: probe.Features,
		sessions: map[string]*session{},
		stopCh:   make(chan struct{}),
	}
	s.wg.Add(1)
	go s.reap()
	return s, nil
}

// Run is `zygote pager`: it serves the control API on cfg.SocketPath until
// ctx is cancelled, then closes every session.
func Run(ctx context.Context, cfg Config) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}

// Serve listens on the control socket and serves until ctx is done, then
// closes the server. It refuses to start while another pager answers on
// the socket.
func (s *Server) Serve(ctx context.Context) error {
	defer s.Close()
	ln, err := listenControl(ctx, s.cfg.SocketPath)
	if err != nil {
		return err
	}
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	s.log.Info("pager serving", "socket", s.cfg.SocketPath, "state_dir", s.cfg.StateDir,
		"cache_bytes", s.cfg.CacheBytes, "uffd_features", s.features.String())
	select {
	case err = <-errc:
		return fmt.Errorf("pager: control API: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	hs.Shutdown(sctx)
	<-errc
	s.log.Info("pager stopping", "sessions", len(s.Sessions()))
	return nil
}

func listenControl(ctx context.Context, path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("pager: control socket dir: %w", err)
	}
	if _, err := os.Lstat(path); err == nil {
		d := net.Dialer{Timeout: time.Second}
		if c, err := d.DialContext(ctx, "unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("pager: another pager serves %s: %w", path, errdefs.ErrAlreadyExists)
		}
		os.Remove(path) // stale socket of a dead pager
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("pager: listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("pager: chmod %s: %w", path, err)
	}
	return ln, nil
}

// Close stops every session (VMs still using them will hang on their next
// missing page: the daemon's supervisor reports them) and frees the cache.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	all := s.sessions
	s.sessions = map[string]*session{}
	s.mu.Unlock()
	close(s.stopCh)
	for _, ss := range all {
		ss.stop()
	}
	for _, ss := range all {
		<-ss.done
		ss.release()
	}
	s.wg.Wait()
	s.ws.Wait()
	s.cache.Close()
	return nil
}

// CreateSession opens the memory file, creates the session socket and
// starts waiting for the VMM. The socket exists when it returns.
func (s *Server) CreateSession(ctx context.Context, req pagerapi.CreateSessionRequest) (pagerapi.Session, error) {
	bad := func(format string, args ...any) (pagerapi.Session, error) {
		return pagerapi.Session{}, fmt.Errorf("pager: create session %q: %s: %w", req.ID, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
	}
	switch {
	case !idRE.MatchString(req.ID):
		return bad("id must match %s", idRE)
	case req.CacheKey == "" || len(req.CacheKey) > 1024:
		return bad("cache_key must be 1..1024 bytes")
	case !filepath.IsAbs(req.MemoryPath):
		return bad("memory_path %q is not absolute", req.MemoryPath)
	case req.SocketPath != "" && !filepath.IsAbs(req.SocketPath):
		return bad("socket_path %q is not absolute", req.SocketPath)
	case req.HandshakeTimeoutMS < 0:
		return bad("handshake_timeout_ms < 0")
	}
	undo := cleanup.New()
	defer undo.Run(ctx)

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return pagerapi.Session{}, fmt.Errorf("pager: shutting down: %w", errdefs.ErrUnavailable)
	}
	old := s.sessions[req.ID]
	if old != nil {
		if _, terminal := old.terminalSince(); !terminal {
			s.mu.Unlock()
			return pagerapi.Session{}, fmt.Errorf("pager: session %q is live: %w", req.ID, errdefs.ErrAlreadyExists)
		}
		delete(s.sessions, req.ID) // an ended session's id may be reused
	}
	s.mu.Unlock()
	if old != nil {
		<-old.done
		old.release()
	}

	f, size, err := openMemoryFile(req.MemoryPath)
	if err != nil {
		return pagerapi.Session{}, fmt.Errorf("pager: create session %q: %w", req.ID, err)
	}
	undo.Add("close memory file", func(context.Context) error { return f.Close() })
	if err := s.cache.Use(req.CacheKey, size); err != nil {
		return pagerapi.Session{}, fmt.Errorf("pager: create session %q: %w", req.ID, err)
	}
	undo.Add("release cache key", func(context.Context) error { s.cache.Unuse(req.CacheKey); return nil })

	sock := req.SocketPath
	if sock == "" {
		sock = filepath.Join(s.cfg.sessionDir(), req.ID+".sock")
	}
	ln, err := listenSession(sock)
	if err != nil {
		return pagerapi.Session{}, fmt.Errorf("pager: create session %q: %w", req.ID, err)
	}
	undo.Add("close session socket", func(context.Context) error { return ln.Close() })
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return pagerapi.Session{}, fmt.Errorf("pager: create session %q: eventfd: %w", req.ID, err)
	}
	undo.Add("close eventfd", func(context.Context) error { return unix.Close(efd) })

	timeout := s.cfg.HandshakeTimeout
	if req.HandshakeTimeoutMS > 0 {
		timeout = time.Duration(req.HandshakeTimeoutMS) * time.Millisecond
	}
	sctx, cancel := context.WithCancel(context.Background()) // the session outlives the request
	ss := &session{
		srv:      s,
		req:      req,
		sockPath: sock,
		file:     f,
		fileSize: size,
		created:  time.Now(),
		timeout:  timeout,
		log:      s.log.With("session", req.ID, "cache_key", req.CacheKey),
		ln:       ln,
		stopFD:   efd,
		cancel:   cancel,
		done:     make(chan struct{}),
		state:    pagerapi.StateWaiting,
	}
	s.mu.Lock()
	if s.closed || s.sessions[req.ID] != nil {
		s.mu.Unlock()
		cancel()
		return pagerapi.Session{}, fmt.Errorf("pager: session %q: raced with another create or shutdown: %w", req.ID, errdefs.ErrConflict)
	}
	s.sessions[req.ID] = ss
	s.wg.Add(1)
	s.mu.Unlock()
	undo.Release()
	go func() {
		defer s.wg.Done()
		ss.run(sctx)
	}()
	ss.log.Info("session created", "memory_path", req.MemoryPath, "socket", sock, "bytes", size)
	return ss.info(), nil
}

func openMemoryFile(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("memory file %s: %w", path, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("memory file: %w", err)
	}
	st, err := f.Stat()
	if err == nil && (!st.Mode().IsRegular() || st.Size() == 0) {
		err = fmt.Errorf("%s is not a non-empty regular file: %w", path, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("memory file: %w", err)
	}
	return f, st.Size(), nil
}

func listenSession(path string) (*net.UnixListener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("socket path %s exists and is not a socket: %w", path, errdefs.ErrAlreadyExists)
		}
		os.Remove(path) // left by a session of a dead pager
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ln, nil
}

// CloseSession stops a session and forgets it. The VM must no longer need
// it (stopped, or Detached): a live VM would hang on its next missing page.
func (s *Server) CloseSession(ctx context.Context, id string) error {
	s.mu.Lock()
	ss := s.sessions[id]
	delete(s.sessions, id)
	s.mu.Unlock()
	if ss == nil {
		return fmt.Errorf("pager: session %q: %w", id, errdefs.ErrNotFound)
	}
	ss.stop()
	select {
	case <-ss.done:
	case <-ctx.Done():
		// It still ends: release once it does.
		go func() { <-ss.done; ss.release() }()
		return fmt.Errorf("pager: close session %q: %w", id, ctx.Err())
	}
	ss.release()
	ss.log.Info("session closed")
	return nil
}

// Session describes one session.
func (s *Server) Session(id string) (pagerapi.Session, error) {
	s.mu.Lock()
	ss := s.sessions[id]
	s.mu.Unlock()
	if ss == nil {
		return pagerapi.Session{}, fmt.Errorf("pager: session %q: %w", id, errdefs.ErrNotFound)
	}
	return ss.info(), nil
}

// Sessions lists every session, live and ended.
func (s *Server) Sessions() []pagerapi.Session {
	s.mu.Lock()
	all := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		all = append(all, ss)
	}
	s.mu.Unlock()
	out := make([]pagerapi.Session, 0, len(all))
	for _, ss := range all {
		out = append(out, ss.info())
	}
	return out
}

// Stats is the cache's and every session's state.
func (s *Server) Stats() pagerapi.Stats {
	return pagerapi.Stats{Cache: s.cache.Stats(), Sessions: s.Sessions()}
}

// Health answers the supervisor's probe.
func (s *Server) Health() pagerapi.Health {
	s.mu.Lock()
	n := len(s.sessions)
	s.mu.Unlock()
	return pagerapi.Health{Status: "ok", PID: os.Getpid(), StartedAt: s.started, Sessions: n, Features: s.features.Names()}
}

// reap forgets sessions that ended more than TerminalTTL ago.
func (s *Server) reap() {
	defer s.wg.Done()
	t := time.NewTicker(min(max(s.cfg.TerminalTTL/4, time.Second), time.Minute))
	defer t.Stop()
	for {
		select {
		case <-s.stopCh:
			return
		case <-t.C:
		}
		var old []*session
		s.mu.Lock()
		for id, ss := range s.sessions {
			if ended, terminal := ss.terminalSince(); terminal && time.Since(ended) > s.cfg.TerminalTTL {
				delete(s.sessions, id)
				old = append(old, ss)
			}
		}
		s.mu.Unlock()
		for _, ss := range old {
			<-ss.done
			ss.release()
		}
	}
}

// planPrefetch builds a session's prefetch plan: the recorded working set
// of its key (unless NoPrefetch), then every chunk (PopulateAll).
func (s *Server) planPrefetch(ss *session, fl *faultLoop) prefetchPlan {
	var end int64
	if ss.req.PopulateAll {
		for _, r := range fl.regions {
			end = max(end, int64(r.Offset+r.Size))
		}
	}
	var recorded []int64
	if !ss.req.NoPrefetch {
		var err error
		if recorded, err = s.ws.Load(ss.req.CacheKey); err != nil {
			ss.log.Warn("recorded working set unusable; restoring without it", "err", err)
		}
	}
	return newPrefetchPlan(recorded, ss.fileSize, fl.chunk, end)
}

// Handler is the control API (see package pagerapi).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+pagerapi.PathHealth, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Health())
	})
	mux.HandleFunc("POST "+pagerapi.PathSessions, func(w http.ResponseWriter, r *http.Request) {
		var req pagerapi.CreateSessionRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, fmt.Errorf("pager: decode create request: %v: %w", err, errdefs.ErrInvalidArgument))
			return
		}
		info, err := s.CreateSession(r.Context(), req)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, info)
	})
	mux.HandleFunc("GET "+pagerapi.PathSessions, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Sessions())
	})
	mux.HandleFunc("GET "+pagerapi.PathSessions+"/{id}", func(w http.ResponseWriter, r *http.Request) {
		info, err := s.Session(r.PathValue("id"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, info)
	})
	mux.HandleFunc("DELETE "+pagerapi.PathSessions+"/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := s.CloseSession(r.Context(), r.PathValue("id")); err != nil {
			writeError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET "+pagerapi.PathStats, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Stats())
	})
	mux.HandleFunc("GET "+pagerapi.PathMetrics, func(w http.ResponseWriter, r *http.Request) {
		states := map[pagerapi.SessionState]int{}
		for _, ss := range s.Sessions() {
			states[ss.State]++
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		writeMetrics(w, s.cache.Stats(), states, &s.total, &s.hist)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	status, body := pagerapi.ErrorFor(err)
	writeJSON(w, status, body)
}
