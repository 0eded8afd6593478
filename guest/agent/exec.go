package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/agentproto"
)

// ExecRequest describes a command to run in the guest.
type ExecRequest struct {
	Command []string
	// Env is added to the guest's base environment (PATH, HOME, TERM).
	Env map[string]string
	// Cwd defaults to /.
	Cwd string
	// Stdin, when not nil, is copied to the command; its EOF closes the
	// command's stdin. Nil gives the command an empty stdin. Exec does not
	// wait for a Stdin.Read that blocks after the command ended: the copying
	// goroutine ends at the next Read return.
	Stdin io.Reader
	// Stdout and Stderr receive the output (nil discards). They are
	// written from one goroutine; in TTY mode everything goes to Stdout.
	Stdout, Stderr io.Writer
	// TTY runs the command on a pseudo-terminal of Rows x Cols.
	TTY        bool
	Rows, Cols uint16
	// Resize, when not nil and TTY is set, carries new terminal sizes
	// while the command runs; each is applied in the guest (TIOCSWINSZ,
	// which sends the command SIGWINCH). Exec stops reading it when the
	// command ends; it need not be closed.
	Resize <-chan WindowSize
	// Timeout, when > 0, kills the command after that long.
	Timeout time.Duration
	// Started, when not nil, is called once the command runs, with the id
	// that Signal and Resize take and the guest pid.
	Started func(id uint64, pid int)
}

// killTimeout bounds the kill request Exec sends when its ctx ends.
const killTimeout = 5 * time.Second

// Exec runs a command in the guest, streaming stdin/stdout/stderr, and
// returns its exit code (128+n when killed by signal n).
//
// A command that cannot start (not found, bad cwd) returns 127, nil, with
// the reason on Stderr. When ctx ends (or Timeout passes) Exec asks the
// guest to SIGKILL the command's process group and returns -1 and the
// context error. When the connection breaks, Exec returns -1 and
// ErrConnectionLost; the guest kills the process group on its side.
func (c *Client) Exec(ctx context.Context, req ExecRequest) (int, error) {
	if len(req.Command) == 0 {
		return -1, fmt.Errorf("agent exec: empty command: %w", errdefs.ErrInvalidArgument)
	}
	name := req.Command[0]
	if req.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, req.Timeout, fmt.Errorf("exec %q timed out after %s: %w", name, req.Timeout, context.DeadlineExceeded))
		defer cancel()
	}
	st, err := c.mux.OpenStream()
	if err != nil {
		return -1, c.lost("exec", err)
	}
	defer st.Close()
	// Until the guest names the exec, ctx only unblocks the stream.
	unblock := context.AfterFunc(ctx, func() { st.SetDeadline(time.Now()) })
	fail := func(err error) (int, error) {
		if ctx.Err() != nil {
			return -1, fmt.Errorf("agent exec %q: %w", name, context.Cause(ctx))
		}
		return -1, c.lost(fmt.Sprintf("exec %q", name), err)
	}
	if err := agentproto.WriteJSON(st, agentproto.MsgRequest, agentproto.Request{Op: agentproto.OpExec, Exec: &agentproto.ExecRequest{
		Command: req.Command, Env: req.Env, Cwd: req.Cwd, TTY: req.TTY, Rows: req.Rows, Cols: req.Cols,
	}}); err != nil {
		unblock()
		return fail(err)
	}
	var resp agentproto.Response
	if err := agentproto.ReadJSON(st, agentproto.MsgResponse, &resp); err != nil {
		unblock()
		return fail(err)
	}
	if resp.Error != nil {
		unblock()
		return -1, fmt.Errorf("agent exec %q: %w", name, remoteError(resp.Error))
	}
	if resp.Exec == nil {
		unblock()
		return -1, fmt.Errorf("agent exec %q: guest sent no exec id", name)
	}
	id := resp.Exec.ID

	// From here, ctx ending kills the process group, then unblocks the
	// stream (if ctx already ended, the kill runs at once). killed is
	// closed when that is done.
	unblock()
	killed := make(chan struct{})
	stopKill := context.AfterFunc(ctx, func() {
		defer close(killed)
		kctx, cancel := context.WithTimeout(context.Background(), killTimeout)
		defer cancel()
		if err := c.Signal(kctx, id, syscall.SIGKILL); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			c.log.Warn("kill exec on cancel", "command", name, "err", err)
		}
		st.SetDeadline(time.Now())
	})
	defer func() {
		if !stopKill() {
			<-killed
		}
	}()
	if resp.Exec.Pid > 0 && req.Started != nil {
		req.Started(id, resp.Exec.Pid)
	}
	if req.TTY && req.Resize != nil {
		stopResize := make(chan struct{})
		resized := make(chan struct{})
		defer func() { close(stopResize); <-resized }()
		go func() { // owner: Exec; ends when Exec returns
			defer close(resized)
			c.forwardResizes(ctx, id, name, req.Resize, stopResize)
		}()
	}

	if req.Stdin == nil {
		if err := agentproto.WriteMsg(st, agentproto.MsgStdinClose, nil); err != nil {
			return fail(err)
		}
	} else {
		go pumpStdin(st, req.Stdin) // ends at the next Read return after the stream closed
	}

	stdout, stderr := orDiscard(req.Stdout), orDiscard(req.Stderr)
	if req.TTY {
		stderr = stdout
	}
	for {
		t, b, err := agentproto.ReadMsg(st)
		if err != nil {
			return fail(err)
		}
		switch t {
		case agentproto.MsgStdout:
			if _, err := stdout.Write(b); err != nil {
				return -1, fmt.Errorf("agent exec %q: write stdout: %w", name, err)
			}
		case agentproto.MsgStderr:
			if _, err := stderr.Write(b); err != nil {
				return -1, fmt.Errorf("agent exec %q: write stderr: %w", name, err)
			}
		case agentproto.MsgExit:
			if ctx.Err() != nil {
				// We killed it: report the cancellation, not the SIGKILL.
				return fail(nil)
			}
			var x agentproto.ExitStatus
			if err := decodeJSON(b, &x); err != nil {
				return -1, fmt.Errorf("agent exec %q: %w", name, err)
			}
			return x.Code, nil
		}
	}
}

// WindowSize is a terminal size.
type WindowSize struct{ Rows, Cols uint16 }

// forwardResizes applies terminal sizes from in until stop is closed.
func (c *Client) forwardResizes(ctx context.Context, id uint64, name string, in <-chan WindowSize, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case ws, ok := <-in:
			if !ok {
				return
			}
			if ws.Rows == 0 || ws.Cols == 0 {
				continue
			}
			rctx, cancel := context.WithTimeout(ctx, killTimeout)
			err := c.Resize(rctx, id, ws.Rows, ws.Cols)
			cancel()
			// The command may just have ended (not_found): not worth a warning.
			if err != nil && !errors.Is(err, errdefs.ErrNotFound) && ctx.Err() == nil {
				c.log.Warn("resize exec terminal", "command", name, "err", err)
			}
		}
	}
}

func pumpStdin(st *yamux.Stream, r io.Reader) {
	buf := make([]byte, agentproto.MaxChunk)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if werr := agentproto.WriteMsg(st, agentproto.MsgStdin, buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			// EOF or a read error: either way the command's stdin ends.
			agentproto.WriteMsg(st, agentproto.MsgStdinClose, nil)
			return
		}
	}
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
