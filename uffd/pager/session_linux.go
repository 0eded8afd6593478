//go:build linux

package pager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/uffd"
	"github.com/zygote/zygote/uffd/pagerapi"
)

// session is one VM restore: a socket waiting for the VMM's handshake, then
// a fault loop over the VMM's userfaultfd. Its goroutine (run) owns the
// socket, the connection, the uffd, the pidfd and the memory file; Server
// owns the session and stops it with stop + <-done.
type session struct {
	srv      *Server
	req      pagerapi.CreateSessionRequest
	sockPath string
	file     *os.File
	fileSize int64
	created  time.Time
	timeout  time.Duration // handshake
	log      *slog.Logger

	ln     *net.UnixListener
	stopFD int // eventfd; a write wakes the fault loop to stop
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns

	st counters

	mu          sync.Mutex
	state       pagerapi.SessionState // +checklocks:mu
	errMsg      string                // +checklocks:mu
	peerPID     int                   // +checklocks:mu
	regions     []pagerapi.Region     // +checklocks:mu
	wsPages     int                   // +checklocks:mu
	populatedMS float64               // +checklocks:mu
	workingMS   float64               // +checklocks:mu
	ended       time.Time             // +checklocks:mu; when it became terminal
}

func (s *session) add(c counter, n uint64) {
	s.st[c].Add(n)
	s.srv.total[c].Add(n)
}

func (s *session) setState(st pagerapi.SessionState, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state = st
	if err != nil {
		s.errMsg = err.Error()
	}
	if st.Terminal() && s.ended.IsZero() {
		s.ended = time.Now()
	}
}

func sinceMS(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

func (s *session) info() pagerapi.Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := sessionStats(&s.st)
	st.WorkingSetPages = s.wsPages
	st.PopulatedMS = s.populatedMS
	st.WorkingSetMS = s.workingMS
	return pagerapi.Session{
		ID:         s.req.ID,
		CacheKey:   s.req.CacheKey,
		MemoryPath: s.req.MemoryPath,
		SocketPath: s.sockPath,
		State:      s.state,
		Error:      s.errMsg,
		PeerPID:    s.peerPID,
		Regions:    append([]pagerapi.Region(nil), s.regions...),
		CreatedAt:  s.created,
		Stats:      st,
	}
}

func (s *session) terminalSince() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended, s.state.Terminal()
}

// stop asks run to end; it does not wait.
func (s *session) stop() {
	s.cancel()
	var one [8]byte
	one[0] = 1
	unix.Write(s.stopFD, one[:])
}

// release frees what outlives run (after <-done).
func (s *session) release() {
	unix.Close(s.stopFD)
}

// run is the session's goroutine: handshake, then the fault loop, then
// cleanup. It never returns an error: the outcome is the session state.
func (s *session) run(ctx context.Context) {
	defer close(s.done)
	defer s.srv.cache.Unuse(s.req.CacheKey)
	defer s.file.Close()

	conn, hs, err := s.handshake(ctx)
	if err != nil {
		if ctx.Err() != nil {
			s.setState(pagerapi.StateExited, errors.New("closed before the handshake"))
			return
		}
		s.log.Error("handshake failed; session socket closed", "err", err)
		s.setState(pagerapi.StateFailed, err)
		return
	}
	defer conn.Close()

	fl, err := newFaultLoop(s, hs)
	if err != nil {
		hs.UFFD.Close()
		s.log.Error("session failed", "err", err)
		s.setState(pagerapi.StateFailed, err)
		return
	}
	s.mu.Lock()
	s.peerPID = int(hs.Peer.Pid)
	for _, r := range fl.regions {
		s.regions = append(s.regions, r.Region)
	}
	s.wsPages = fl.plan.wsPages
	s.mu.Unlock()
	s.setState(pagerapi.StateServing, nil)
	s.log.Info("serving", "peer_pid", hs.Peer.Pid, "regions", len(fl.regions),
		"working_set_pages", fl.plan.wsPages, "working_set_chunks", fl.plan.wsChunks, "populate_all", s.req.PopulateAll, "recording", fl.rec != nil)

	end, err := fl.run(ctx)
	fl.close()
	switch end {
	case endDetached:
		s.mu.Lock()
		s.populatedMS = sinceMS(fl.started)
		s.mu.Unlock()
		s.setState(pagerapi.StateDetached, nil)
		s.log.Info("every page placed, ranges unregistered: the VM no longer needs the pager")
	case endPeerExited:
		s.setState(pagerapi.StateExited, nil)
		s.log.Info("VMM exited; session closed", "peer_pid", hs.Peer.Pid)
	case endStopped:
		s.setState(pagerapi.StateExited, errors.New("closed by request"))
	default:
		s.setState(pagerapi.StateFailed, err)
		s.log.Error("fault loop failed", "err", err)
	}
}

// handshake accepts the one VMM connection and reads Firecracker's
// handshake from it. The socket is closed and unlinked once a peer
// connects: a session serves exactly one VMM.
func (s *session) handshake(ctx context.Context) (*net.UnixConn, uffd.Handshake, error) {
	deadline := time.Now().Add(s.timeout)
	s.ln.SetDeadline(deadline)
	unblock := context.AfterFunc(ctx, func() { s.ln.SetDeadline(time.Unix(1, 0)) })
	conn, err := s.ln.AcceptUnix()
	unblock()
	s.ln.Close() // unlinks the socket file
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("no VMM connected to %s within %s", s.sockPath, s.timeout)
		}
		return nil, uffd.Handshake{}, err
	}
	conn.SetReadDeadline(deadline)
	unblock = context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	hs, err := uffd.RecvHandshake(conn, s.fileSize)
	unblock()
	if err != nil {
		conn.Close()
		return nil, uffd.Handshake{}, err
	}
	conn.SetReadDeadline(time.Time{})
	return conn, hs, nil
}
