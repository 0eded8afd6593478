package initd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/zygote/zygote/guest/agentproto"
)

// execProc is a running exec of a session.
type execProc struct {
	id  uint64
	p   *proc
	tty *os.File // pty master in TTY mode
}

// kill signals the exec's process group and reports whether it was still
// running.
func (e *execProc) kill(sig syscall.Signal) bool {
	select {
	case <-e.p.done:
		return false // reaped: its pid may belong to someone else now
	default:
	}
	_ = syscall.Kill(-e.p.pid, sig)
	return true
}

// drainGrace: after the process exited, its output is forwarded until the
// pipes reach end of file; if they stay silent this long (a background
// child kept them open), they are closed.
const drainGrace = time.Second

// execIO holds both ends of an exec's stdio.
type execIO struct {
	stdin          *os.File // parent's write end (the pty master in TTY mode)
	stdout, stderr *os.File // parent's read ends (stderr nil in TTY mode)
	tty            *os.File // pty master
	child          []*os.File
}

func newExecIO(req *agentproto.ExecRequest) (*execIO, error) {
	if req.TTY {
		master, slave, err := openPTY(req.Rows, req.Cols)
		if err != nil {
			return nil, fmt.Errorf("open pty: %w", err)
		}
		return &execIO{stdin: master, stdout: master, tty: master, child: []*os.File{slave, slave, slave}}, nil
	}
	x := &execIO{}
	var pipes [3][2]*os.File
	for i := range pipes {
		r, w, err := os.Pipe()
		if err != nil {
			x.closeParent()
			x.closeChild()
			return nil, fmt.Errorf("pipe: %w", err)
		}
		pipes[i] = [2]*os.File{r, w}
		if i == 0 {
			x.stdin = w
			x.child = append(x.child, r)
		} else {
			x.child = append(x.child, w)
		}
	}
	x.stdout, x.stderr = pipes[1][0], pipes[2][0]
	return x, nil
}

func (x *execIO) childFds() []uintptr {
	fds := make([]uintptr, len(x.child))
	for i, f := range x.child {
		fds[i] = f.Fd()
	}
	return fds
}

func (x *execIO) closeChild() {
	for _, f := range x.child {
		f.Close() // the slave appears three times: later Closes fail harmlessly
	}
}

func (x *execIO) closeParent() {
	for _, f := range []*os.File{x.stdin, x.stdout, x.stderr} {
		if f != nil {
			f.Close()
		}
	}
}

// exec runs one command for the host. Protocol on the stream, after the
// request: Response{Exec}, then MsgStdout/MsgStderr as output comes, then
// MsgExit. The host sends MsgStdin and MsgStdinClose. An end of stream
// from the host before MsgExit went out means the host abandoned the exec:
// its process group is killed.
func (s *session) exec(st *yamux.Stream, req *agentproto.ExecRequest) {
	if req == nil || len(req.Command) == 0 {
		replyErr(st, &agentproto.Error{Code: agentproto.CodeInvalidArgument, Message: "exec: empty command"})
		return
	}
	a := s.a
	id := a.nextExec.Add(1)
	root, baseEnv, cwd := a.execDefaults()
	env := mergeEnv(baseEnv, req.Env)
	if req.Cwd != "" {
		cwd = req.Cwd
	}
	x, err := newExecIO(req)
	if err != nil {
		replyErr(st, err)
		return
	}
	var p *proc
	path, err := lookPathIn(root, req.Command[0], env)
	if err == nil {
		sys := &syscall.SysProcAttr{Setpgid: true}
		if req.TTY {
			sys = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		}
		sys.Chroot = root // the workload's root filesystem, if any
		p, err = a.procs.start(path, req.Command, &syscall.ProcAttr{Dir: cwd, Env: env, Files: x.childFds(), Sys: sys})
		if err != nil {
			err = fmt.Errorf("exec %s: %w", path, err)
		}
	}
	x.closeChild()
	if err != nil {
		x.closeParent()
		if reply(st, agentproto.Response{Exec: &agentproto.ExecStarted{ID: id}}) == nil {
			agentproto.WriteMsg(st, agentproto.MsgStderr, []byte("zygote-init: "+err.Error()+"\n"))
			agentproto.WriteJSON(st, agentproto.MsgExit, agentproto.ExitStatus{Code: 127, StartError: err.Error()})
		}
		return
	}
	e := &execProc{id: id, p: p, tty: x.tty}
	defer s.unregister(id)
	if !s.register(e) || reply(st, agentproto.Response{Exec: &agentproto.ExecStarted{ID: id, Pid: p.pid}}) != nil {
		e.kill(syscall.SIGKILL)
	}

	var exited atomic.Bool
	s.wg.Go(func() { pumpStdin(st, x, e, &exited, req.TTY) })

	outs := []*copier{{src: x.stdout, typ: agentproto.MsgStdout, st: st}}
	if x.stderr != nil {
		outs = append(outs, &copier{src: x.stderr, typ: agentproto.MsgStderr, st: st})
	}
	var copiers sync.WaitGroup
	for _, c := range outs {
		copiers.Go(c.run)
	}

	<-p.done
	exited.Store(true)
	// Unblock a stdin write into a pipe nobody reads any more.
	if x.tty == nil {
		x.stdin.Close()
	}
	waitDrained(&copiers, outs)
	x.closeParent()

	code, sig := exitCode(p.ws)
	agentproto.WriteJSON(st, agentproto.MsgExit, agentproto.ExitStatus{Code: code, Signal: sig})
}

// pumpStdin forwards MsgStdin to the process until MsgStdinClose, and kills
// the process if the host goes away before it exited.
func pumpStdin(st *yamux.Stream, x *execIO, e *execProc, exited *atomic.Bool, tty bool) {
	stdinOpen := true
	closeStdin := func() {
		if stdinOpen && !tty {
			x.stdin.Close()
		}
		stdinOpen = false
	}
	defer closeStdin()
	for {
		t, b, err := agentproto.ReadMsg(st)
		if err != nil {
			if !exited.Load() {
				e.kill(syscall.SIGKILL)
			}
			return
		}
		switch t {
		case agentproto.MsgStdin:
			if stdinOpen {
				if _, err := x.stdin.Write(b); err != nil {
					// The process closed its stdin: drop the rest.
					closeStdin()
				}
			}
		case agentproto.MsgStdinClose:
			if tty && stdinOpen {
				x.stdin.Write([]byte{4}) // ^D: end of file for the line discipline
			}
			closeStdin()
		}
	}
}

// copier forwards one output pipe to the stream.
type copier struct {
	src    *os.File
	typ    agentproto.MsgType
	st     io.Writer
	inRead atomic.Bool
	ended  atomic.Bool
	moved  atomic.Int64 // reads + writes completed
}

func (c *copier) run() {
	defer c.ended.Store(true)
	buf := make([]byte, agentproto.MaxChunk)
	for {
		c.inRead.Store(true)
		n, err := c.src.Read(buf)
		c.inRead.Store(false)
		c.moved.Add(1)
		if n > 0 {
			if werr := agentproto.WriteMsg(c.st, c.typ, buf[:n]); werr != nil {
				// Host gone: stop reading, so the writer gets EPIPE.
				c.src.Close()
				return
			}
			c.moved.Add(1)
		}
		if err != nil {
			// EOF, or EIO from a pty master whose slave side closed.
			if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.EIO) && !errors.Is(err, os.ErrClosed) {
				c.src.Close()
			}
			return
		}
	}
}

// waitDrained waits for the copiers; if all of them sit in a read with no
// progress for drainGrace, it closes their sources.
func waitDrained(wg *sync.WaitGroup, cs []*copier) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(drainGrace)
	defer tick.Stop()
	last := int64(-1)
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		var moved int64
		idle := true
		for _, c := range cs {
			moved += c.moved.Load()
			idle = idle && (c.inRead.Load() || c.ended.Load())
		}
		if idle && moved == last {
			for _, c := range cs {
				c.src.Close()
			}
			<-done
			return
		}
		last = moved
	}
}
