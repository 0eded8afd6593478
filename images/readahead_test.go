package images

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"testing"
	"testing/iotest"
)

func TestReadAhead(t *testing.T) {
	for _, size := range []int{0, 1, 1 << 20, 3<<20 + 7, 20 << 20} {
		data := make([]byte, size)
		rand.New(rand.NewSource(int64(size))).Read(data)
		for _, name := range []string{"whole", "half-reads"} {
			var src io.Reader = bytes.NewReader(data)
			if name == "half-reads" {
				src = iotest.HalfReader(src)
			}
			ra := newReadAhead(src, 2)
			got, err := io.ReadAll(iotest.OneByteReader(io.LimitReader(ra, 5)))
			if err != nil {
				t.Fatal(err)
			}
			rest, err := io.ReadAll(ra)
			if err != nil {
				t.Fatalf("size %d %s: %v", size, name, err)
			}
			if !bytes.Equal(append(got, rest...), data) {
				t.Fatalf("size %d %s: data differs (%d bytes read)", size, name, len(got)+len(rest))
			}
			ra.Close()
		}
	}
	// The producer's error reaches the consumer after the data before it.
	boom := errors.New("boom")
	ra := newReadAhead(io.MultiReader(bytes.NewReader([]byte("abc")), iotest.ErrReader(boom)), 2)
	got, err := io.ReadAll(ra)
	if string(got) != "abc" || !errors.Is(err, boom) {
		t.Fatalf("got %q, %v", got, err)
	}
	ra.Close()
	// Close stops a producer that is ahead of an idle consumer.
	ra = newReadAhead(bytes.NewReader(make([]byte, 32<<20)), 2)
	if _, err := ra.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	ra.Close()
}
