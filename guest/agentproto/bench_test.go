package agentproto

import (
	"bytes"
	"hash/crc32"
	"io"
	"testing"
)

// These benchmarks price the link layer per byte. Run them inside a TCG
// guest too (build with CGO_ENABLED=0 go test -c) to compare with the
// agent channel's throughput: there the channel is bound by per-frame
// costs, not by these.

func BenchmarkAppendFrame(b *testing.B) {
	p := make([]byte, MaxPayload)
	var buf []byte
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		buf, _ = AppendFrame(buf[:0], Frame{Kind: FrameData, Epoch: 1, Payload: p})
	}
}

func BenchmarkCRC32C(b *testing.B) {
	p := make([]byte, MaxPayload)
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		crc32.Checksum(p, castagnoli)
	}
}

// BenchmarkMemmove is the baseline: one copy of a frame's payload.
func BenchmarkMemmove(b *testing.B) {
	p := make([]byte, MaxPayload)
	q := make([]byte, MaxPayload)
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		copy(q, p)
	}
}

func BenchmarkLinkRoundTrip(b *testing.B) {
	p := make([]byte, MaxPayload)
	frame, _ := AppendFrame(nil, Frame{Kind: FrameData, Epoch: 1, Payload: p})
	stream := bytes.Repeat(frame, 64)
	b.SetBytes(int64(len(stream)))
	for b.Loop() {
		lr := NewLinkReader(bytes.NewReader(stream))
		for {
			if _, err := lr.ReadFrame(); err == io.EOF {
				break
			}
		}
	}
}
