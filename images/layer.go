package images

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/zygote/zygote/errdefs"
)

// ErrDigestMismatch classes a blob whose content does not hash to the
// digest the manifest names (a corrupt or tampered registry blob).
var ErrDigestMismatch = fmt.Errorf("%w: blob digest mismatch", errdefs.ErrInvalidArgument)

// countingReader counts bytes and hashes them as they pass.
type countingReader struct {
	r      io.Reader
	h      hash.Hash
	n      int64
	onRead func(n int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.h.Write(p[:n])
		c.n += int64(n)
		if c.onRead != nil {
			c.onRead(int64(n))
		}
	}
	return n, err
}

// applyVerified streams one layer's compressed blob through a sha256 and
// a decompressor (gzip, zstd or none, by magic number) into fl, then reads
// the blob to its end and checks the digest and size the manifest names.
// Nothing is trusted from the source's own verification: registry, OCI
// layout and docker-save layers are all checked here.
func applyVerified(l v1.Layer, fl *flattener, onRead func(int64)) error {
	want, err := l.Digest()
	if err != nil {
		return fmt.Errorf("layer digest: %w", err)
	}
	size, err := l.Size()
	if err != nil {
		return fmt.Errorf("layer %s size: %w", want, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("fetch layer %s: %w", want, err)
	}
	defer rc.Close()
	cr := &countingReader{r: rc, h: sha256.New(), onRead: onRead}
	br := bufio.NewReaderSize(cr, 1<<20)
	magic, _ := br.Peek(4)
	var tarStream io.Reader
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("layer %s: gzip: %w", want, err)
		}
		defer zr.Close()
		tarStream = zr
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return fmt.Errorf("layer %s: zstd: %w", want, err)
		}
		defer zr.Close()
		tarStream = zr
	default:
		tarStream = br
	}
	ra := newReadAhead(tarStream, 8)
	defer ra.Close()
	applyErr := fl.applyLayer(ra)
	if errors.Is(applyErr, errEscape) {
		return fmt.Errorf("layer %s: %w", want, applyErr)
	}
	// Read the blob to its end (tar padding, compression trailer) so the
	// digest covers all of it. A corrupt blob usually also breaks gzip or
	// tar; the digest mismatch is the real cause, so it is reported first.
	if applyErr == nil {
		if _, err := io.CopyBuffer(io.Discard, ra, fl.buf); err != nil {
			applyErr = fmt.Errorf("read layer: %w", err)
		}
	}
	ra.Close() // the producer no longer reads br
	if err := drainAndCheck(br, cr, want, size, fl.buf); err != nil {
		return err
	}
	if applyErr != nil {
		return fmt.Errorf("layer %s: %w", want, applyErr)
	}
	return nil
}

func drainAndCheck(br *bufio.Reader, cr *countingReader, want v1.Hash, size int64, buf []byte) error {
	if _, err := io.CopyBuffer(io.Discard, br, buf); err != nil {
		// go-containerregistry's remote reader checks the digest itself
		// at EOF; its error type is internal, its message is stable.
		if strings.Contains(err.Error(), "error verifying") {
			return fmt.Errorf("layer %s: %w: %v", want, ErrDigestMismatch, err)
		}
		return fmt.Errorf("layer %s: read: %w", want, err)
	}
	if want.Algorithm != "sha256" {
		return fmt.Errorf("layer %s: unsupported digest algorithm: %w", want, errdefs.ErrNotImplemented)
	}
	got := "sha256:" + hex.EncodeToString(cr.h.Sum(nil))
	if got != want.String() {
		return fmt.Errorf("layer %s: content hashes to %s: %w", want, got, ErrDigestMismatch)
	}
	if size > 0 && cr.n != size {
		return fmt.Errorf("layer %s: %d bytes, manifest says %d: %w", want, cr.n, size, ErrDigestMismatch)
	}
	return nil
}
