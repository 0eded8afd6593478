//go:build linux

package clone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

const page = 4096

// segment is a data range [Off, End) of a file.
type segment struct{ Off, End int64 }

// writeSparse creates path with the given size and pseudo-random data in
// the given segments (page aligned), holes elsewhere, and fsyncs it. Every
// MiB is stamped with its offset, so no two are alike, and no page is all
// zero (which a filesystem could store as a hole).
func writeSparse(t testing.TB, path string, size int64, data []segment, seed uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	buf := make([]byte, 1<<20)
	for i := 0; i < len(buf); i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], rng.Uint64()|1)
	}
	for _, s := range data {
		for off := s.Off; off < s.End; {
			n := min(int64(len(buf)), s.End-off)
			binary.LittleEndian.PutUint64(buf, uint64(off)|1<<63)
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				t.Fatal(err)
			}
			off += n
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// pageFiles creates parent/src holding one-page files with the given
// names and returns it.
func pageFiles(t testing.TB, parent string, names ...string) string {
	t.Helper()
	src := filepath.Join(parent, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, name := range names {
		writeSparse(t, filepath.Join(src, name), page, []segment{{0, page}}, uint64(i))
	}
	return src
}

// dataMap lists the data segments of path as SEEK_DATA/SEEK_HOLE see them.
func dataMap(t testing.TB, path string) []segment {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	var segs []segment
	err = forEachData(f, fi.Size(), func(start, end int64) error {
		segs = append(segs, segment{start, end})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return segs
}

func digest(t testing.TB, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func lstat(t testing.TB, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// writeAt overwrites len(b) bytes of path at off in place and fsyncs.
func writeAt(t testing.TB, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// entries lists every path under root (relative, sorted), so a test can
// assert exactly what exists, temporaries included.
func entries(t testing.TB, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// assertNothingLeft fails if parent holds anything but the names in keep.
func assertNothingLeft(t testing.TB, parent string, keep ...string) {
	t.Helper()
	des, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range des {
		if !slices.Contains(keep, d.Name()) {
			t.Errorf("left behind in %s: %s", parent, d.Name())
		}
	}
}

// logRecorder is a slog handler that keeps records for assertions.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

// attrs returns the attributes of the records with message msg.
func (l *logRecorder) attrs(msg string) []map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]string
	for _, r := range l.recs {
		if r.Message != msg {
			continue
		}
		m := map[string]string{}
		r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
		out = append(out, m)
	}
	return out
}

// quietOpts are Options that log into a recorder instead of stderr.
func quietOpts() (Options, *logRecorder) {
	rec := &logRecorder{}
	return Options{Logger: slog.New(rec)}, rec
}

func equalBytes(t testing.TB, a, b string) bool {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(x, y)
}
