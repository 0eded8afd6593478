package agentproto

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
)

// MsgType tags a message on a multiplexed stream. A message is
//
//	type   u8
//	length u32 BE (at most MaxMsg)
//	payload
type MsgType uint8

const (
	// MsgRequest (host → guest) opens every stream: a JSON Request.
	MsgRequest MsgType = 1
	// MsgResponse (guest → host) answers it: a JSON Response.
	MsgResponse MsgType = 2
	// MsgStdin carries bytes for an exec's stdin (host → guest).
	MsgStdin MsgType = 3
	// MsgStdinClose ends the exec's stdin (host → guest).
	MsgStdinClose MsgType = 4
	// MsgStdout and MsgStderr carry the exec's output (guest → host).
	MsgStdout MsgType = 5
	MsgStderr MsgType = 6
	// MsgExit ends an exec (guest → host): a JSON ExitStatus. No output
	// follows it.
	MsgExit MsgType = 7
)

func (t MsgType) String() string {
	switch t {
	case MsgRequest:
		return "request"
	case MsgResponse:
		return "response"
	case MsgStdin:
		return "stdin"
	case MsgStdinClose:
		return "stdin-close"
	case MsgStdout:
		return "stdout"
	case MsgStderr:
		return "stderr"
	case MsgExit:
		return "exit"
	case MsgFileHeader:
		return "file-header"
	case MsgFileData:
		return "file-data"
	case MsgFileEnd:
		return "file-end"
	case MsgCopyDone:
		return "copy-done"
	}
	return fmt.Sprintf("msg(%d)", uint8(t))
}

const (
	msgHeaderSize = 5
	// MaxMsg bounds one message; stdio is sent in chunks of MaxChunk.
	MaxMsg = 1 << 20
	// MaxChunk is the largest stdio payload per message: with the message
	// header and yamux's, one chunk fills one link frame.
	MaxChunk = MaxPayload - yamuxHeaderSize - msgHeaderSize
)

// WriteMsg writes one message in a single Write call.
func WriteMsg(w io.Writer, t MsgType, payload []byte) error {
	if len(payload) > MaxMsg {
		return fmt.Errorf("agentproto: %s message of %d bytes exceeds %d", t, len(payload), MaxMsg)
	}
	buf := make([]byte, msgHeaderSize+len(payload))
	buf[0] = byte(t)
	binary.BigEndian.PutUint32(buf[1:5], uint32(len(payload)))
	copy(buf[msgHeaderSize:], payload)
	_, err := w.Write(buf)
	return err
}

// WriteJSON writes v as a JSON message.
func WriteJSON(w io.Writer, t MsgType, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("agentproto: encode %s: %w", t, err)
	}
	return WriteMsg(w, t, b)
}

// ReadMsg reads one message. A clean end of stream before a message is
// io.EOF; a stream cut inside a message is io.ErrUnexpectedEOF.
func ReadMsg(r io.Reader) (MsgType, []byte, error) {
	var hdr [msgHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:5])
	if n > MaxMsg {
		return 0, nil, fmt.Errorf("agentproto: %s message of %d bytes exceeds %d", MsgType(hdr[0]), n, MaxMsg)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return MsgType(hdr[0]), payload, nil
}

// ReadJSON reads one message, requires type want, and decodes it into v.
func ReadJSON(r io.Reader, want MsgType, v any) error {
	t, b, err := ReadMsg(r)
	if err != nil {
		return err
	}
	if t != want {
		return fmt.Errorf("agentproto: got %s message, want %s", t, want)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("agentproto: decode %s: %w", t, err)
	}
	return nil
}
