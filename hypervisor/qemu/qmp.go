package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// qmp is a minimal QEMU Machine Protocol client: one command at a time,
// responses matched in order, asynchronous events skipped. It owns no
// goroutine: every read happens inside execute, bounded by ctx. After any
// I/O or protocol error the connection is dropped (a late reply would
// otherwise be taken for the next command's) and the next command
// reconnects.
type qmp struct {
	path   string
	exited <-chan struct{}

	mu     sync.Mutex // serialises commands; guards conn and rd
	conn   *net.UnixConn
	rd     *bufio.Reader
	closed bool
}

type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *qmpError) Error() string { return fmt.Sprintf("qmp %s: %s", e.Class, e.Desc) }

type qmpMessage struct {
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
	Event  string          `json:"event"`
	QMP    json.RawMessage `json:"QMP"`
}

// dialQMP connects to a QMP unix socket, retrying until it appears or ctx
// ends, reads the greeting and leaves capabilities negotiation mode.
func dialQMP(ctx context.Context, path string, exited <-chan struct{}) (*qmp, error) {
	q := &qmp{path: path, exited: exited}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.connect(ctx); err != nil {
		return nil, err
	}
	return q, nil
}

// connect dials and negotiates. Callers hold q.mu.
func (q *qmp) connect(ctx context.Context) error {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", q.path)
		if err == nil {
			q.conn, q.rd = c.(*net.UnixConn), bufio.NewReader(c)
			if err := q.handshake(ctx); err != nil {
				q.drop()
				return err
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("connect qmp %s: %w (last error: %v)", q.path, ctx.Err(), err)
		case <-q.exited:
			return fmt.Errorf("connect qmp %s: the VMM exited", q.path)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (q *qmp) handshake(ctx context.Context) error {
	stop := q.bound(ctx)
	defer stop()
	msg, err := q.read()
	if err != nil {
		return fmt.Errorf("qmp greeting: %w", err)
	}
	if msg.QMP == nil {
		return errors.New("qmp greeting: unexpected first message")
	}
	_, err = q.roundTrip("qmp_capabilities", nil, nil)
	return err
}

// bound makes blocking I/O on the connection end with ctx: at its
// deadline, or at once when it is cancelled.
func (q *qmp) bound(ctx context.Context) (stop func()) {
	dl, _ := ctx.Deadline()
	q.conn.SetDeadline(dl)
	conn := q.conn
	cancel := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	return func() { cancel() }
}

func (q *qmp) read() (qmpMessage, error) {
	line, err := q.rd.ReadBytes('\n')
	if err != nil {
		return qmpMessage{}, err
	}
	var msg qmpMessage
	if err := json.Unmarshal(line, &msg); err != nil {
		return qmpMessage{}, fmt.Errorf("decode %q: %w", line, err)
	}
	return msg, nil
}

// roundTrip sends one command (with fds as SCM_RIGHTS) and returns its
// result. A command error from QEMU is returned as *qmpError with the
// connection intact; anything else drops the connection. Callers hold q.mu.
func (q *qmp) roundTrip(cmd string, args any, fds []int) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	raw, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := q.conn.WriteMsgUnix(raw, oob, nil); err != nil {
		q.drop()
		return nil, fmt.Errorf("qmp %s: send: %w", cmd, err)
	}
	for {
		msg, err := q.read()
		if err != nil {
			q.drop()
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		switch {
		case msg.Event != "":
			continue
		case msg.Error != nil:
			return nil, fmt.Errorf("qmp %s: %w", cmd, msg.Error)
		default:
			return msg.Return, nil
		}
	}
}

// drop closes a connection whose stream can no longer be trusted.
func (q *qmp) drop() {
	if q.conn != nil {
		q.conn.Close()
		q.conn, q.rd = nil, nil
	}
}

// execute runs cmd and decodes its result into result (if non-nil).
func (q *qmp) execute(ctx context.Context, cmd string, args any, result any) error {
	return q.executeWithFD(ctx, cmd, args, -1, result)
}

// executeWithFD runs cmd passing fd (if ≥ 0) over the socket, the way
// `getfd` expects.
func (q *qmp) executeWithFD(ctx context.Context, cmd string, args any, fd int, result any) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return errors.New("qmp: connection closed")
	}
	if q.conn == nil {
		if err := q.connect(ctx); err != nil {
			return err
		}
	}
	stop := q.bound(ctx)
	defer stop()
	var fds []int
	if fd >= 0 {
		fds = []int{fd}
	}
	ret, err := q.roundTrip(cmd, args, fds)
	if err != nil {
		return err
	}
	if result != nil && len(ret) > 0 {
		if err := json.Unmarshal(ret, result); err != nil {
			return fmt.Errorf("qmp %s: decode result: %w", cmd, err)
		}
	}
	return nil
}

func (q *qmp) close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.drop()
	return nil
}
