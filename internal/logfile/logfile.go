package logfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Limits caps a log: at most Files files of at most MaxBytes each.
type Limits struct {
	MaxBytes int64
	Files    int
}

// DefaultLimits is 10 MiB × 2 files.
var DefaultLimits = Limits{MaxBytes: 10 << 20, Files: 2}

// withDefaults fills zero fields from DefaultLimits.
func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultLimits.MaxBytes
	}
	if l.Files <= 0 {
		l.Files = DefaultLimits.Files
	}
	return l
}

// Rotated returns the name of path's n-th rotated file (n ≥ 1):
// "dir/console.log" → "dir/console.1.log".
func Rotated(path string, n int) string {
	ext := filepath.Ext(path)
	return fmt.Sprintf("%s.%d%s", strings.TrimSuffix(path, ext), n, ext)
}

// Writer appends to a size-capped, rotated log file. It is safe for
// concurrent use.
type Writer struct {
	path   string
	limits Limits

	mu     sync.Mutex // guards f, size and closed
	f      *os.File   // nil after a failed reopen: the next Write retries
	size   int64
	closed bool
}

// Open opens (or creates) path for appending under limits (zero fields
// take DefaultLimits).
func Open(path string, limits Limits) (*Writer, error) {
	w := &Writer{path: path, limits: limits.withDefaults()}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Writer) open() error {
	f, err := os.OpenFile(w.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	w.f, w.size = f, fi.Size()
	return nil
}

// Write appends p, rotating first if p would take the file past the cap.
// A p larger than the cap keeps only its last MaxBytes.
func (w *Writer) Write(p []byte) (int, error) {
	n := len(p)
	if int64(len(p)) > w.limits.MaxBytes {
		p = p[int64(len(p))-w.limits.MaxBytes:]
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, os.ErrClosed
	}
	if w.f == nil {
		if err := w.open(); err != nil { // a full disk, say: try again next time
			return 0, err
		}
	}
	if w.size > 0 && w.size+int64(len(p)) > w.limits.MaxBytes {
		if err := w.rotate(); err != nil {
			return 0, err
		}
	}
	m, err := w.f.Write(p)
	w.size += int64(m)
	if err != nil {
		return m, err
	}
	return n, nil
}

// rotate shifts the rotated files up by one, renames the live file to the
// first rotated name and opens a new one. If a rename fails the live file
// is truncated instead: the cap holds either way.
func (w *Writer) rotate() error {
	w.f.Close()
	w.f = nil
	var err error = errOneFile
	if w.limits.Files > 1 {
		if err = shift(w.path, w.limits.Files); err == nil {
			err = os.Rename(w.path, Rotated(w.path, 1))
		}
	}
	if err != nil {
		if err := os.Truncate(w.path, 0); err != nil {
			return err
		}
	}
	return w.open()
}

// shift makes room for a new first rotated file: x.(k) → x.(k+1), the
// oldest (x.(files-1)) removed.
func shift(path string, files int) error {
	if files < 2 {
		return nil
	}
	if err := os.Remove(Rotated(path, files-1)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for k := files - 2; k >= 1; k-- {
		if err := os.Rename(Rotated(path, k), Rotated(path, k+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

var errOneFile = errors.New("a single file: truncate")

// Close closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// CapAppended keeps a file that another process appends to (O_APPEND)
// within limits: when it is larger than MaxBytes, its content (its last
// MaxBytes) is copied to the first rotated name, older rotated files
// shifted, and the file truncated to zero in place, so the writer's next
// append lands at offset 0. Lines written between the copy and the
// truncate are lost. It reports whether it rotated.
func CapAppended(path string, limits Limits) (bool, error) {
	limits = limits.withDefaults()
	fi, err := os.Stat(path)
	if err != nil || fi.Size() <= limits.MaxBytes {
		return false, nil
	}
	if limits.Files > 1 {
		if err := shift(path, limits.Files); err != nil {
			return false, err
		}
		if err := copyTail(path, Rotated(path, 1), limits.MaxBytes); err != nil {
			return false, err
		}
	}
	if err := os.Truncate(path, 0); err != nil {
		return false, err
	}
	return true, nil
}

// copyTail writes the last limit bytes of src to a new dst.
func copyTail(src, dst string, limit int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, io.NewSectionReader(in, max(fi.Size()-limit, 0), limit))
	return errors.Join(err, out.Close())
}
