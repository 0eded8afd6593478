package initd

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/zygote/zygote/guest/agentproto"
)

// session is one host connection (one epoch).
type session struct {
	a      *Agent
	epoch  uint64
	conn   *agentproto.SessionConn
	mux    *yamux.Session
	closed chan struct{}
	once   sync.Once
	wg     sync.WaitGroup // stream handlers and their helpers

	mu    sync.Mutex // guards execs and ended
	execs map[uint64]*execProc
	ended bool
}

func newSession(a *Agent, epoch uint64) (*session, error) {
	conn := agentproto.NewSessionConn(a.link, epoch)
	mux, err := yamux.Server(conn, agentproto.MuxConfig(a.log, 0))
	if err != nil {
		return nil, fmt.Errorf("yamux server: %w", err)
	}
	return &session{a: a, epoch: epoch, conn: conn, mux: mux, closed: make(chan struct{}), execs: make(map[uint64]*execProc)}, nil
}

// serve accepts streams until the session closes, then waits for their
// handlers.
func (s *session) serve() {
	defer s.wg.Wait()
	for {
		st, err := s.mux.AcceptStream()
		if err != nil {
			return
		}
		s.wg.Go(func() { s.handle(st) })
	}
}

// close ends the session and kills its execs; it returns how many were
// still running.
func (s *session) close() (killed int) {
	s.once.Do(func() {
		close(s.closed)
		s.conn.Close()
		s.mu.Lock()
		s.ended = true
		for _, e := range s.execs {
			if e.kill(syscall.SIGKILL) {
				killed++
			}
		}
		s.mu.Unlock()
		// yamux's Close waits for its send loop, which may sit in a port
		// write until a host connects again: not on the caller's path.
		s.a.wg.Go(func() { s.mux.Close() })
	})
	return killed
}

func (s *session) register(e *execProc) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return false
	}
	s.execs[e.id] = e
	return true
}

func (s *session) unregister(id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.execs, id)
}

func (s *session) lookup(id uint64) *execProc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.execs[id]
}

func (s *session) handle(st *yamux.Stream) {
	defer st.Close()
	var req agentproto.Request
	if err := agentproto.ReadJSON(st, agentproto.MsgRequest, &req); err != nil {
		s.a.log.Debug("read request", "err", err)
		return
	}
	a := s.a
	switch req.Op {
	case agentproto.OpPing:
		reply(st, agentproto.Response{Ping: &agentproto.PingResult{GuestUnixNano: time.Now().UnixNano()}})
	case agentproto.OpConfigure:
		replyErr(st, a.configure(req.Configure))
	case agentproto.OpExec:
		s.exec(st, req.Exec)
	case agentproto.OpSignal:
		replyErr(st, s.signal(req.Signal))
	case agentproto.OpResize:
		replyErr(st, s.resize(req.Resize))
	case agentproto.OpStat:
		info, err := s.stat(req.Stat)
		if err != nil {
			replyErr(st, err)
			return
		}
		reply(st, agentproto.Response{Stat: info})
	case agentproto.OpCopyFrom:
		s.copyFrom(st, req.CopyFrom)
	case agentproto.OpCopyTo:
		s.copyTo(st, req.CopyTo)
	case agentproto.OpRestored:
		res, err := a.restored(req.Restored)
		if err != nil {
			replyErr(st, err)
			return
		}
		reply(st, agentproto.Response{Restored: res})
	case agentproto.OpWaitWorkload:
		s.waitWorkload(st)
	case agentproto.OpShutdown:
		if err := reply(st, agentproto.Response{}); err == nil {
			// The host closes the stream once it has the answer; wait for
			// that (briefly) so that the answer is out of the guest before
			// the machine goes away.
			st.SetReadDeadline(time.Now().Add(2 * time.Second))
			io.Copy(io.Discard, st)
		}
		a.powerOff()
	default:
		replyErr(st, &agentproto.Error{Code: agentproto.CodeNotImplemented, Message: fmt.Sprintf("unknown op %q", req.Op)})
	}
}

func reply(w io.Writer, r agentproto.Response) error {
	return agentproto.WriteJSON(w, agentproto.MsgResponse, r)
}

func replyErr(w io.Writer, err error) error {
	if err == nil {
		return reply(w, agentproto.Response{})
	}
	var pe *agentproto.Error
	if !errors.As(err, &pe) {
		pe = &agentproto.Error{Code: agentproto.CodeInternal, Message: err.Error()}
	}
	return reply(w, agentproto.Response{Error: pe})
}

func (s *session) signal(req *agentproto.SignalRequest) error {
	if req == nil || req.Signal <= 0 || req.Signal >= 65 {
		return &agentproto.Error{Code: agentproto.CodeInvalidArgument, Message: "signal: want an exec id and a signal number 1-64"}
	}
	e := s.lookup(req.ID)
	if e == nil {
		return &agentproto.Error{Code: agentproto.CodeNotFound, Message: fmt.Sprintf("no running exec %d in this session", req.ID)}
	}
	e.kill(syscall.Signal(req.Signal))
	return nil
}

func (s *session) resize(req *agentproto.ResizeRequest) error {
	if req == nil {
		return &agentproto.Error{Code: agentproto.CodeInvalidArgument, Message: "resize: empty request"}
	}
	e := s.lookup(req.ID)
	if e == nil {
		return &agentproto.Error{Code: agentproto.CodeNotFound, Message: fmt.Sprintf("no running exec %d in this session", req.ID)}
	}
	if e.tty == nil {
		return &agentproto.Error{Code: agentproto.CodeInvalidArgument, Message: fmt.Sprintf("exec %d has no tty", req.ID)}
	}
	if err := setWinsize(e.tty, req.Rows, req.Cols); err != nil {
		return &agentproto.Error{Code: agentproto.CodeInternal, Message: fmt.Sprintf("resize: %v", err)}
	}
	return nil
}
