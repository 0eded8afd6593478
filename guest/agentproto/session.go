package agentproto

import (
	"encoding/binary"
	"io"
	"sync"
)

// SessionConn is the byte stream of one session (one epoch) carried in
// FrameData frames over a shared link. It is the io.ReadWriteCloser that the
// multiplexer (yamux) runs on. Writes become frames of at most MaxPayload
// bytes; the link reader hands inbound payloads to Deliver.
type SessionConn struct {
	w     *LinkWriter
	epoch uint64

	in        chan []byte
	closed    chan struct{}
	closeOnce sync.Once

	// rest is the unread part of the last delivered payload; only Read
	// touches it (yamux reads from one goroutine).
	rest []byte
	// hdr holds a yamux data header whose body is the next Write; only
	// Write touches it (yamux writes from one goroutine).
	hdr []byte
}

// yamux frames (spec.md of hashicorp/yamux): a 12-byte header — version,
// type, flags, stream id, length — written with one Write, then, for a
// data frame with a length, the body with the next Write.
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
)

// NewSessionConn returns the session stream for epoch over w.
func NewSessionConn(w *LinkWriter, epoch uint64) *SessionConn {
	return &SessionConn{w: w, epoch: epoch, in: make(chan []byte), closed: make(chan struct{})}
}

// Epoch returns the session's epoch.
func (c *SessionConn) Epoch() uint64 { return c.epoch }

// Deliver hands one inbound payload to the reader. It blocks until the
// reader took it or the conn is closed, and reports whether it was taken.
// The multiplexer reads promptly (its flow control bounds what it buffers),
// so Deliver blocks only briefly.
func (c *SessionConn) Deliver(p []byte) bool {
	if len(p) == 0 {
		return true
	}
	select {
	case c.in <- p:
		return true
	case <-c.closed:
		return false
	}
}

// Read implements io.Reader.
func (c *SessionConn) Read(p []byte) (int, error) {
	if len(c.rest) == 0 {
		select {
		case c.rest = <-c.in:
		case <-c.closed:
			return 0, io.EOF
		}
	}
	n := copy(p, c.rest)
	c.rest = c.rest[n:]
	return n, nil
}

// Write implements io.Writer, splitting p into frames. A yamux data header
// is held back and sent in one frame with the body that follows it: one
// link frame (one virtio-serial buffer) per stdio chunk instead of three,
// which matters under TCG where each costs a fraction of a millisecond.
func (c *SessionConn) Write(p []byte) (int, error) {
	if c.hdr == nil && len(p) == yamuxHeaderSize && p[0] == 0 && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:]) > 0 {
		c.hdr = append(make([]byte, 0, MaxPayload), p...)
		return len(p), nil
	}
	if c.hdr != nil {
		hdr := c.hdr
		c.hdr = nil
		n := min(len(p), MaxPayload-len(hdr))
		if _, err := c.write(append(hdr, p[:n]...)); err != nil {
			return 0, err
		}
		m, err := c.write(p[n:])
		return n + m, err
	}
	return c.write(p)
}

func (c *SessionConn) write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		select {
		case <-c.closed:
			return written, ErrSessionClosed
		default:
		}
		n := min(len(p), MaxPayload)
		if err := c.w.WriteFrame(Frame{Kind: FrameData, Epoch: c.epoch, Payload: p[:n]}); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// Close ends the conn: Read returns io.EOF, Write and Deliver fail. It does
// not close the underlying link.
func (c *SessionConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

// Done is closed when the conn is closed.
func (c *SessionConn) Done() <-chan struct{} { return c.closed }
