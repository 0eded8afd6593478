package agentproto

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

func encode(t *testing.T, frames ...Frame) []byte {
	t.Helper()
	var b []byte
	for _, f := range frames {
		var err error
		if b, err = AppendFrame(b, f); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func readAll(t *testing.T, r io.Reader) ([]Frame, *LinkReader) {
	t.Helper()
	lr := NewLinkReader(r)
	var out []Frame
	for {
		f, err := lr.ReadFrame()
		if errors.Is(err, io.EOF) {
			return out, lr
		}
		if err != nil {
			t.Fatalf("ReadFrame: %v", err)
		}
		out = append(out, f)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	want := []Frame{
		{Kind: FrameHello, Epoch: 1, Payload: []byte(`{"version":1}`)},
		{Kind: FrameData, Epoch: 1, Payload: bytes.Repeat([]byte{0xab}, MaxPayload)},
		{Kind: FrameData, Epoch: 1, Payload: []byte{}},
		{Kind: FrameBye, Epoch: 1<<63 + 5},
	}
	// One byte at a time exercises every partial-read path.
	got, lr := readAll(t, iotestOneByte(bytes.NewReader(encode(t, want...))))
	if len(got) != len(want) {
		t.Fatalf("got %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Kind != want[i].Kind || got[i].Epoch != want[i].Epoch || !bytes.Equal(got[i].Payload, want[i].Payload) {
			t.Errorf("frame %d: got %v/%d/%d bytes, want %v/%d/%d bytes", i,
				got[i].Kind, got[i].Epoch, len(got[i].Payload), want[i].Kind, want[i].Epoch, len(want[i].Payload))
		}
	}
	if lr.Skipped != 0 {
		t.Errorf("skipped %d bytes of a clean stream", lr.Skipped)
	}
}

func TestFrameTooLarge(t *testing.T) {
	if _, err := AppendFrame(nil, Frame{Kind: FrameData, Payload: make([]byte, MaxPayload+1)}); err == nil {
		t.Fatal("oversized payload accepted")
	}
	if _, err := AppendFrame(nil, Frame{Kind: 9}); err == nil {
		t.Fatal("invalid kind accepted")
	}
}

// A guest restored from a snapshot may hold the head of a frame whose tail
// never arrives; the next host's Hello is appended to it. The reader must
// reject the spliced frame (CRC over the payload) and find the Hello inside.
func TestResyncAfterTruncatedFrame(t *testing.T) {
	old := encode(t, Frame{Kind: FrameData, Epoch: 7, Payload: bytes.Repeat([]byte("x"), 1000)})
	hello := Frame{Kind: FrameHello, Epoch: 8, Payload: []byte(`{"version":1}`)}
	stream := append(append([]byte(nil), old[:300]...), encode(t, hello)...)
	// Pad so the reader can read the truncated frame's declared length.
	stream = append(stream, make([]byte, 1000)...)
	stream = append(stream, encode(t, hello)...)

	got, lr := readAll(t, bytes.NewReader(stream))
	if len(got) != 2 {
		t.Fatalf("got %d frames, want the 2 hellos: %+v", len(got), got)
	}
	for _, f := range got {
		if f.Kind != FrameHello || f.Epoch != 8 {
			t.Errorf("got %v epoch %d, want hello epoch 8", f.Kind, f.Epoch)
		}
	}
	if lr.Skipped == 0 {
		t.Error("Skipped = 0 after garbage")
	}
}

func TestResyncRandomGarbage(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var stream []byte
	var want []Frame
	for i := range 200 {
		g := make([]byte, r.IntN(100))
		for j := range g {
			g[j] = byte(r.UintN(256))
		}
		if r.IntN(4) == 0 {
			// A stray magic inside garbage must not derail the reader.
			g = append(g, magicBytes...)
		}
		f := Frame{Kind: FrameData, Epoch: uint64(i), Payload: []byte{byte(i), 1, 2, 3}}
		want = append(want, f)
		stream = append(stream, g...)
		stream = append(stream, encode(t, f)...)
	}
	got, _ := readAll(t, bytes.NewReader(stream))
	if len(got) != len(want) {
		t.Fatalf("got %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Epoch != want[i].Epoch || !bytes.Equal(got[i].Payload, want[i].Payload) {
			t.Fatalf("frame %d mismatch", i)
		}
	}
}

func TestCorruptPayloadRejected(t *testing.T) {
	b := encode(t, Frame{Kind: FrameData, Epoch: 1, Payload: []byte("hello")})
	b[HeaderSize+1] ^= 0xff
	got, _ := readAll(t, bytes.NewReader(b))
	if len(got) != 0 {
		t.Fatalf("corrupt frame delivered: %+v", got)
	}
}

func TestLinkReaderReset(t *testing.T) {
	full := encode(t, Frame{Kind: FrameData, Epoch: 1, Payload: []byte("abc")})
	pr, pw := io.Pipe()
	lr := NewLinkReader(pr)
	go func() {
		pw.Write(full[:10])
		pw.Close()
	}()
	if _, err := lr.ReadFrame(); !errors.Is(err, io.EOF) {
		t.Fatalf("got %v, want EOF", err)
	}
	lr.Reset()
	lr.r = bytes.NewReader(encode(t, Frame{Kind: FrameBye, Epoch: 2}))
	f, err := lr.ReadFrame()
	if err != nil || f.Kind != FrameBye || f.Epoch != 2 {
		t.Fatalf("after Reset: %v %v", f, err)
	}
	if lr.Skipped != 10 {
		t.Errorf("Skipped = %d, want 10", lr.Skipped)
	}
}

type oneByte struct{ r io.Reader }

func (o oneByte) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

func iotestOneByte(r io.Reader) io.Reader { return oneByte{r} }

func TestMsgRoundTrip(t *testing.T) {
	var b bytes.Buffer
	if err := WriteJSON(&b, MsgRequest, Request{Op: OpExec, Exec: &ExecRequest{Command: []string{"echo", "hi"}}}); err != nil {
		t.Fatal(err)
	}
	if err := WriteMsg(&b, MsgStdout, []byte("out")); err != nil {
		t.Fatal(err)
	}
	var req Request
	if err := ReadJSON(&b, MsgRequest, &req); err != nil {
		t.Fatal(err)
	}
	if req.Op != OpExec || req.Exec == nil || req.Exec.Command[1] != "hi" {
		t.Fatalf("decoded %+v", req)
	}
	if err := ReadJSON(&b, MsgResponse, &req); err == nil {
		t.Fatal("wrong message type accepted")
	}
	if _, _, err := ReadMsg(&b); !errors.Is(err, io.EOF) {
		t.Fatalf("after last message: %v, want EOF", err)
	}
	// A message cut in the middle is an unexpected EOF, not a clean end.
	var c bytes.Buffer
	WriteMsg(&c, MsgStdout, []byte("abcdef"))
	if _, _, err := ReadMsg(bytes.NewReader(c.Bytes()[:8])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut message: %v, want ErrUnexpectedEOF", err)
	}
	if err := WriteMsg(io.Discard, MsgStdout, make([]byte, MaxMsg+1)); err == nil {
		t.Fatal("oversized message accepted")
	}
}

func TestSessionConnSplitsAndDelivers(t *testing.T) {
	var wire bytes.Buffer
	c := NewSessionConn(NewLinkWriter(&wire), 42)
	payload := bytes.Repeat([]byte("0123456789"), MaxPayload/4) // > 2 frames
	if n, err := c.Write(payload); err != nil || n != len(payload) {
		t.Fatalf("Write: %d %v", n, err)
	}
	frames, _ := readAll(t, &wire)
	if len(frames) != 3 {
		t.Fatalf("got %d frames, want 3", len(frames))
	}
	rx := NewSessionConn(NewLinkWriter(io.Discard), 42)
	go func() {
		for _, f := range frames {
			if f.Epoch != 42 || f.Kind != FrameData {
				t.Errorf("frame %v epoch %d", f.Kind, f.Epoch)
			}
			rx.Deliver(f.Payload)
		}
		rx.Close()
	}()
	got, err := io.ReadAll(rx)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("read back %d bytes (%v), want %d", len(got), err, len(payload))
	}
	if rx.Deliver([]byte("late")) {
		t.Error("Deliver after Close reported success")
	}
	if _, err := rx.Write([]byte("x")); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("Write after Close: %v", err)
	}
}

// A yamux data header and its body leave as one link frame.
func TestSessionConnCoalescesYamuxHeader(t *testing.T) {
	var wire bytes.Buffer
	c := NewSessionConn(NewLinkWriter(&wire), 9)
	hdr := []byte{0, yamuxTypeData, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5}
	if n, err := c.Write(hdr); n != len(hdr) || err != nil {
		t.Fatalf("header Write: %d %v", n, err)
	}
	if wire.Len() != 0 {
		t.Fatal("data header sent before its body")
	}
	if n, err := c.Write([]byte("hello")); n != 5 || err != nil {
		t.Fatalf("body Write: %d %v", n, err)
	}
	// A window update (type 1) has no body: it goes at once.
	upd := []byte{0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0}
	c.Write(upd)
	frames, _ := readAll(t, &wire)
	if len(frames) != 2 || !bytes.Equal(frames[0].Payload, append(append([]byte(nil), hdr...), "hello"...)) || !bytes.Equal(frames[1].Payload, upd) {
		t.Fatalf("frames = %+v", frames)
	}
	// A body larger than what fits with the header spills into more frames.
	big := bytes.Repeat([]byte("z"), MaxPayload)
	hdr[8], hdr[9], hdr[10], hdr[11] = 0, 0, 0x7f, 0xe8
	c.Write(hdr)
	if n, err := c.Write(big); n != len(big) || err != nil {
		t.Fatalf("big body Write: %d %v", n, err)
	}
	frames, _ = readAll(t, &wire)
	if len(frames) != 2 || len(frames[0].Payload) != MaxPayload || len(frames[1].Payload) != yamuxHeaderSize {
		t.Fatalf("big: %d frames", len(frames))
	}
}
