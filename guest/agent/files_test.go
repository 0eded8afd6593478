package agent_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/guest/agentproto"
	"github.com/zygote/zygote/guest/initd/initdtest"
)

// syncBuffer is a bytes.Buffer safe for one writer and a polling reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitOutput(t *testing.T, b *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(strings.ReplaceAll(b.String(), "\r", ""), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output %q never contained %q", b.String(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A TTY exec follows resizes sent while it runs.
func TestExecTTYResize(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)
	stdinR, stdinW := io.Pipe()
	resize := make(chan agent.WindowSize, 1)
	var out syncBuffer
	done := make(chan result, 1)
	go func() {
		code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"sh", "-c", "stty size; while read x; do stty size; done"},
			TTY: true, Rows: 24, Cols: 80, Resize: resize, Stdin: stdinR, Stdout: &out})
		done <- result{code: code, err: err}
	}()
	waitOutput(t, &out, "24 80\n")
	resize <- agent.WindowSize{Rows: 40, Cols: 120}
	// The resize lands asynchronously: ask again until the shell sees it.
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(strings.ReplaceAll(out.String(), "\r", ""), "40 120\n") {
		if time.Now().After(deadline) {
			t.Fatalf("resize never seen: %q", out.String())
		}
		stdinW.Write([]byte("\n"))
		time.Sleep(50 * time.Millisecond)
	}
	stdinW.Close()
	if r := <-done; r.err != nil || r.code != 0 {
		t.Fatalf("exec: %+v, output %q", r, out.String())
	}
}

// makeTree builds a tree with modes, mtimes and symlinks, one of which
// points out of the tree (at /etc).
func makeTree(t *testing.T, dir string) time.Time {
	t.Helper()
	mt := time.Date(2021, 3, 4, 5, 6, 7, 123456789, time.UTC)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "sub", "deep"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "exec.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "sub", "secret"), []byte("s3cret"), 0o600))
	must(os.WriteFile(filepath.Join(dir, "sub", "deep", "big"), bytes.Repeat([]byte("0123456789abcdef"), 300_000), 0o644))
	must(os.Symlink("/etc", filepath.Join(dir, "etc-link")))
	must(os.Symlink("../exec.sh", filepath.Join(dir, "sub", "rel-link")))
	must(os.Chmod(filepath.Join(dir, "sub"), 0o750))
	for _, p := range []string{"exec.sh", "sub/secret", "sub/deep/big", "sub/deep", "sub", "."} {
		must(os.Chtimes(filepath.Join(dir, p), mt, mt))
	}
	return mt
}

func TestStat(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)
	dir := t.TempDir()
	mt := makeTree(t, dir)
	for _, tc := range []struct {
		path   string
		follow bool
		want   agentproto.PathInfo
	}{
		{"sub/secret", false, agentproto.PathInfo{Exists: true, IsFile: true, Mode: 0o600, Size: 6, Mtime: mt.Unix()}},
		{"sub", false, agentproto.PathInfo{Exists: true, IsDir: true, Mode: 0o750, Mtime: mt.Unix()}},
		{"etc-link", false, agentproto.PathInfo{Exists: true, IsSymlink: true, LinkTarget: "/etc", Mode: 0o777}},
		{"nope", false, agentproto.PathInfo{Exists: false}},
	} {
		got, err := c.Stat(ctx, filepath.Join(dir, tc.path), tc.follow)
		if err != nil {
			t.Fatalf("stat %s: %v", tc.path, err)
		}
		if tc.want.IsSymlink || tc.want.IsDir {
			got.Size, got.Mtime = tc.want.Size, tc.want.Mtime // fs-dependent
		}
		got.UID, got.GID = 0, 0
		if got != tc.want {
			t.Errorf("stat %s = %+v, want %+v", tc.path, got, tc.want)
		}
	}
	if got, err := c.Stat(ctx, filepath.Join(dir, "etc-link"), true); err != nil || !got.IsDir || got.IsSymlink {
		t.Errorf("stat following /etc link = %+v, %v", got, err)
	}
	if _, err := c.Stat(ctx, "relative/path", false); !errdefs.IsInvalidArgument(err) {
		t.Errorf("stat relative path: %v, want invalid argument", err)
	}
}

type entry struct {
	h    agentproto.FileHeader
	data []byte
}

func copyFrom(t *testing.T, c *agent.Client, path string) []entry {
	t.Helper()
	var got []entry
	_, err := c.CopyFrom(testCtx(t), agentproto.CopyFromRequest{Path: path}, func(h agentproto.FileHeader, r io.Reader) error {
		b, err := io.ReadAll(r)
		got = append(got, entry{h, b})
		return err
	})
	if err != nil {
		t.Fatalf("copy from %s: %v", path, err)
	}
	return got
}

// A tree goes out and back in: modes, mtimes, owners and symlinks (verbatim,
// never followed) survive.
func TestCopyTreeRoundTrip(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)
	src := filepath.Join(t.TempDir(), "tree")
	mt := makeTree(t, src)
	os.Lchown(filepath.Join(src, "sub", "secret"), 1234, 5678)

	got := copyFrom(t, c, src)
	byPath := map[string]entry{}
	for i, e := range got {
		byPath[e.h.Path] = e
		if i == 0 && (e.h.Path != "tree" || !e.h.IsDir) {
			t.Fatalf("first entry %+v, want the root directory named tree", e.h)
		}
		if strings.HasPrefix(e.h.Path, "/") || strings.Contains(e.h.Path, "..") {
			t.Errorf("entry path %q is absolute or climbs", e.h.Path)
		}
	}
	if len(got) != 8 {
		t.Errorf("got %d entries, want 8: %+v", len(got), got)
	}
	if e := byPath["tree/etc-link"]; !e.h.IsSymlink || e.h.LinkTarget != "/etc" || len(e.data) != 0 {
		t.Errorf("etc-link = %+v (%d bytes): want the link itself, not /etc", e.h, len(e.data))
	}
	if e := byPath["tree/sub/secret"]; e.h.Mode != 0o600 || string(e.data) != "s3cret" || e.h.Mtime != mt.Unix() || e.h.MtimeNsec != int64(mt.Nanosecond()) {
		t.Errorf("secret = %+v %q", e.h, e.data)
	} else if os.Geteuid() == 0 && (e.h.UID != 1234 || e.h.GID != 5678) {
		t.Errorf("secret owner %d:%d, want 1234:5678", e.h.UID, e.h.GID)
	}
	if e := byPath["tree/sub/deep/big"]; len(e.data) != 4_800_000 || e.h.Size != 4_800_000 {
		t.Errorf("big: %d bytes, header %d", len(e.data), e.h.Size)
	}

	// Back in, entry by entry, directories' mtimes last (as a client does).
	dst := filepath.Join(t.TempDir(), "copy")
	var dirs []agentproto.CopyToRequest
	for _, e := range got {
		rel := strings.TrimPrefix(strings.TrimPrefix(e.h.Path, "tree"), "/")
		req := agentproto.CopyToRequest{Path: filepath.Join(dst, rel), IsDir: e.h.IsDir, Mode: e.h.Mode,
			UID: e.h.UID, GID: e.h.GID, Mtime: e.h.Mtime, MtimeNsec: e.h.MtimeNsec}
		if e.h.IsSymlink {
			req.LinkTarget = e.h.LinkTarget
		}
		n, err := c.CopyTo(ctx, req, bytes.NewReader(e.data))
		if err != nil || n != int64(len(e.data)) {
			t.Fatalf("copy to %s: %d, %v", req.Path, n, err)
		}
		if e.h.IsDir {
			dirs = append([]agentproto.CopyToRequest{req}, dirs...)
		}
	}
	for _, d := range dirs {
		if _, err := c.CopyTo(ctx, d, nil); err != nil {
			t.Fatal(err)
		}
	}
	again := copyFrom(t, c, dst)
	if len(again) != len(got) {
		t.Fatalf("round trip: %d entries, want %d", len(again), len(got))
	}
	for i := range got {
		want, have := got[i], again[i]
		want.h.Path = strings.Replace(want.h.Path, "tree", "copy", 1)
		if want.h.IsSymlink { // a link's own mode and size are the filesystem's
			have.h.Mode, have.h.Size = want.h.Mode, want.h.Size
		}
		if have.h != want.h || !bytes.Equal(have.data, want.data) {
			t.Errorf("round trip entry %d:\n got %+v\nwant %+v", i, have.h, want.h)
		}
	}
	if target, err := os.Readlink(filepath.Join(dst, "etc-link")); err != nil || target != "/etc" {
		t.Errorf("etc-link in the copy: %q, %v", target, err)
	}
	// No temporary files left behind.
	ents, _ := os.ReadDir(filepath.Join(dst, "sub"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".zygote-cp-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func TestCopyEdgeCases(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)
	dir := t.TempDir()
	makeTree(t, dir)

	// A single file: path "".
	got := copyFrom(t, c, filepath.Join(dir, "exec.sh"))
	if len(got) != 1 || got[0].h.Path != "" || got[0].h.Mode != 0o755 || string(got[0].data) != "#!/bin/sh\necho hi\n" {
		t.Errorf("single file: %+v", got)
	}
	// A fifo is left out (opening it would block the walk).
	fifoDir := filepath.Join(dir, "withfifo")
	os.Mkdir(fifoDir, 0o755)
	if err := syscall.Mkfifo(filepath.Join(fifoDir, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(fifoDir, "after"), []byte("z"), 0o644)
	if got := copyFrom(t, c, fifoDir); len(got) != 2 || got[1].h.Path != "withfifo/after" {
		t.Errorf("tree with a fifo: %+v", got)
	}
	// Missing source: not found, before any entry.
	if _, err := c.CopyFrom(ctx, agentproto.CopyFromRequest{Path: filepath.Join(dir, "nope")}, nil); !errdefs.IsNotFound(err) {
		t.Errorf("copy from a missing path: %v", err)
	}
	// Following the link sends what it points to.
	_, err := c.CopyFrom(ctx, agentproto.CopyFromRequest{Path: filepath.Join(dir, "sub", "rel-link"), FollowLinks: true}, func(h agentproto.FileHeader, r io.Reader) error {
		if h.IsSymlink || h.Size != int64(len("#!/bin/sh\necho hi\n")) {
			t.Errorf("followed link header %+v", h)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	// Following a link to a directory walks the directory.
	os.Symlink("sub", filepath.Join(dir, "sub-link"))
	var names []string
	if _, err := c.CopyFrom(ctx, agentproto.CopyFromRequest{Path: filepath.Join(dir, "sub-link"), FollowLinks: true}, func(h agentproto.FileHeader, r io.Reader) error {
		names = append(names, h.Path)
		return nil
	}); err != nil || !strings.Contains(strings.Join(names, " "), "sub-link/deep/big") {
		t.Errorf("copy following a link to a directory: %v %v", names, err)
	}
	// A file over a directory is refused; parents are created.
	if _, err := c.CopyTo(ctx, agentproto.CopyToRequest{Path: filepath.Join(dir, "sub")}, strings.NewReader("x")); !errdefs.IsInvalidArgument(err) {
		t.Errorf("file over a directory: %v", err)
	}
	p := filepath.Join(dir, "new", "parents", "f")
	if n, err := c.CopyTo(ctx, agentproto.CopyToRequest{Path: p, Mode: 0o4755}, strings.NewReader("abc")); err != nil || n != 3 {
		t.Fatalf("copy to with new parents: %d %v", n, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil || st.Mode&0o7777 != 0o4755 {
		t.Errorf("mode of %s: %o %v, want 4755", p, st.Mode&0o7777, err)
	}
	// Overwriting keeps the name pointing at a complete file.
	if _, err := c.CopyTo(ctx, agentproto.CopyToRequest{Path: p}, strings.NewReader("new content")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "new content" {
		t.Errorf("overwrite: %q", b)
	}
	// A source that fails mid-way leaves the destination untouched.
	if _, err := c.CopyTo(ctx, agentproto.CopyToRequest{Path: p}, io.MultiReader(strings.NewReader("partial"), errReader{})); err == nil {
		t.Error("copy from a failing reader succeeded")
	}
	if b, _ := os.ReadFile(p); string(b) != "new content" {
		t.Errorf("after a failed copy: %q", b)
	}
	if _, err := c.CopyTo(ctx, agentproto.CopyToRequest{Path: "rel"}, nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("relative destination: %v", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrClosedPipe }
