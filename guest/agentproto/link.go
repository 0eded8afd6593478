package agentproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
)

// Link-layer constants. A frame is
//
//	magic  u32 BE  "ZYGL"
//	kind   u8      FrameHello | FrameWelcome | FrameData | FrameBye
//	-      3 bytes reserved, zero
//	epoch  u64 BE  session identifier chosen by the host at connect time
//	length u32 BE  payload length, at most MaxPayload
//	crc    u32 BE  CRC-32C over the 20 header bytes above and the payload
//	payload
//
// The CRC covers the payload so that a frame whose tail was lost (the guest
// resumed from a snapshot mid-frame, a new host appended its own bytes) is
// rejected instead of being fed to a session; the reader then resynchronises
// by scanning for the next magic.
const (
	linkMagic  = 0x5a59474c // "ZYGL"
	HeaderSize = 24
	// MaxFrame is the largest frame on the wire. The guest's virtio-serial
	// driver moves at most 32 KiB per write(2), so a frame of this size is
	// handed to the host in one piece.
	MaxFrame   = 32 * 1024
	MaxPayload = MaxFrame - HeaderSize
)

// FrameKind says what a link frame carries.
type FrameKind uint8

const (
	// FrameHello (host → guest) opens a session with a new epoch; payload
	// is a JSON HostHello. The host repeats it until it sees a Welcome.
	FrameHello FrameKind = 1
	// FrameWelcome (guest → host) accepts the session named by the epoch;
	// payload is a JSON Hello. Repeated Hellos of the same epoch are
	// answered with repeated Welcomes and do not reset the session.
	FrameWelcome FrameKind = 2
	// FrameData carries session (yamux) bytes of the epoch's session.
	FrameData FrameKind = 3
	// FrameBye (host → guest) ends the epoch's session on purpose.
	FrameBye FrameKind = 4
)

func (k FrameKind) valid() bool { return k >= FrameHello && k <= FrameBye }

func (k FrameKind) String() string {
	switch k {
	case FrameHello:
		return "hello"
	case FrameWelcome:
		return "welcome"
	case FrameData:
		return "data"
	case FrameBye:
		return "bye"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Frame is one decoded link frame.
type Frame struct {
	Kind    FrameKind
	Epoch   uint64
	Payload []byte
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// AppendFrame appends the encoding of f to dst.
func AppendFrame(dst []byte, f Frame) ([]byte, error) {
	if len(f.Payload) > MaxPayload {
		return dst, fmt.Errorf("agentproto: frame payload %d bytes exceeds %d", len(f.Payload), MaxPayload)
	}
	if !f.Kind.valid() {
		return dst, fmt.Errorf("agentproto: invalid frame kind %d", f.Kind)
	}
	start := len(dst)
	var hdr [HeaderSize]byte
	binary.BigEndian.PutUint32(hdr[0:4], linkMagic)
	hdr[4] = byte(f.Kind)
	binary.BigEndian.PutUint64(hdr[8:16], f.Epoch)
	binary.BigEndian.PutUint32(hdr[16:20], uint32(len(f.Payload)))
	dst = append(dst, hdr[:]...)
	dst = append(dst, f.Payload...)
	sum := crc32.Update(crc32.Checksum(dst[start:start+20], castagnoli), castagnoli, f.Payload)
	binary.BigEndian.PutUint32(dst[start+20:start+24], sum)
	return dst, nil
}

// LinkWriter writes whole frames to a byte stream, one write(2) per frame,
// serialising concurrent writers.
type LinkWriter struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

// NewLinkWriter returns a LinkWriter on w.
func NewLinkWriter(w io.Writer) *LinkWriter { return &LinkWriter{w: w} }

// WriteFrame encodes and writes one frame.
func (l *LinkWriter) WriteFrame(f Frame) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var err error
	l.buf, err = AppendFrame(l.buf[:0], f)
	if err != nil {
		return err
	}
	if _, err := l.w.Write(l.buf); err != nil {
		return fmt.Errorf("agentproto: write %s frame: %w", f.Kind, err)
	}
	return nil
}

// WritePadding writes MaxFrame zero bytes. Whoever starts a session sends
// it first: the peer may hold the head of a frame cut short (a guest
// restored from a snapshot, a new host appended to an old stream), which
// would otherwise swallow the next frames until its declared length is
// reached. Zeros complete any such frame, its CRC fails, and the reader
// resynchronises on the frame that follows.
func (l *LinkWriter) WritePadding() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.w.Write(padding[:]); err != nil {
		return fmt.Errorf("agentproto: write padding: %w", err)
	}
	return nil
}

var padding [MaxFrame]byte

// LinkReader decodes frames from a byte stream that may contain garbage:
// the tail of a frame from a previous connection, or bytes of a frame whose
// end was lost. Anything that is not a whole, checksummed frame is skipped.
type LinkReader struct {
	r   io.Reader
	buf []byte // unparsed bytes; buf[0:] starts at a candidate position
	// Skipped counts the bytes discarded while resynchronising.
	Skipped int64
}

// NewLinkReader returns a LinkReader on r.
func NewLinkReader(r io.Reader) *LinkReader {
	return &LinkReader{r: r, buf: make([]byte, 0, 2*MaxFrame)}
}

// Reset drops any buffered partial data, for use after the byte stream was
// broken (the peer went away): what is buffered belongs to the old peer.
func (l *LinkReader) Reset() {
	l.Skipped += int64(len(l.buf))
	l.buf = l.buf[:0]
}

// fill reads at least once more from r, growing buf.
func (l *LinkReader) fill() error {
	if len(l.buf) == cap(l.buf) {
		nb := make([]byte, len(l.buf), 2*cap(l.buf))
		copy(nb, l.buf)
		l.buf = nb
	}
	n, err := l.r.Read(l.buf[len(l.buf):cap(l.buf)])
	l.buf = l.buf[:len(l.buf)+n]
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

var magicBytes = []byte{0x5a, 0x59, 0x47, 0x4c}

// skip discards buf[:n].
func (l *LinkReader) skip(n int) {
	l.Skipped += int64(n)
	l.buf = l.buf[:copy(l.buf, l.buf[n:])]
}

// resync drops the current candidate position and moves to the next magic
// (or keeps the last 3 bytes, which may start one).
func (l *LinkReader) resync() {
	if i := bytes.Index(l.buf[1:], magicBytes); i >= 0 {
		l.skip(i + 1)
		return
	}
	keep := min(len(l.buf), len(magicBytes)-1)
	l.skip(len(l.buf) - keep)
}

// ReadFrame returns the next valid frame. The payload is a fresh slice owned
// by the caller. Errors are those of the underlying reader (io.EOF when the
// peer went away).
func (l *LinkReader) ReadFrame() (Frame, error) {
	for {
		for len(l.buf) < HeaderSize {
			if err := l.fill(); err != nil {
				return Frame{}, err
			}
		}
		h := l.buf[:HeaderSize]
		n := binary.BigEndian.Uint32(h[16:20])
		if binary.BigEndian.Uint32(h[0:4]) != linkMagic || !FrameKind(h[4]).valid() ||
			h[5] != 0 || h[6] != 0 || h[7] != 0 || n > MaxPayload {
			l.resync()
			continue
		}
		total := HeaderSize + int(n)
		for len(l.buf) < total {
			if err := l.fill(); err != nil {
				return Frame{}, err
			}
		}
		h = l.buf[:HeaderSize]
		sum := crc32.Update(crc32.Checksum(h[:20], castagnoli), castagnoli, l.buf[HeaderSize:total])
		if sum != binary.BigEndian.Uint32(h[20:24]) {
			l.resync()
			continue
		}
		f := Frame{
			Kind:    FrameKind(h[4]),
			Epoch:   binary.BigEndian.Uint64(h[8:16]),
			Payload: append([]byte(nil), l.buf[HeaderSize:total]...),
		}
		l.buf = l.buf[:copy(l.buf, l.buf[total:])]
		return f, nil
	}
}

// ErrSessionClosed is returned by a closed SessionConn.
var ErrSessionClosed = errors.New("agentproto: session closed")
