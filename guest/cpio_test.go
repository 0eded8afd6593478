package guest

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func writeSample(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	w := NewCpioWriter(&b)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Dir("bin", 0o755))
	must(w.File("bin/hello", 0o755, 5, strings.NewReader("hello")))
	must(w.Symlink("bin/sh", "/bin/busybox"))
	must(w.Dir("tmp", 0o777|fs.ModeSticky))
	must(w.CharDevice("console", 0o600, 5, 1))
	must(w.File("empty", 0o644, 0, strings.NewReader("")))
	must(w.File("odd", 0o644, 3, strings.NewReader("abc"))) // exercises padding
	must(w.Close())
	return b.Bytes()
}

func TestCpioRoundTrip(t *testing.T) {
	archive := writeSample(t)
	r := NewCpioReader(bytes.NewReader(archive))
	type got struct {
		name, data, link string
		mode             uint32
		maj, min         uint32
	}
	var all []got
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(r)
		if h.IsSymlink {
			data = nil
		}
		all = append(all, got{h.Name, string(data), h.LinkTarget, h.Mode, h.RdevMajor, h.RdevMinor})
	}
	want := []got{
		{name: "bin", mode: 0o040755},
		{name: "bin/hello", data: "hello", mode: 0o100755},
		{name: "bin/sh", link: "/bin/busybox", mode: 0o120777},
		{name: "tmp", mode: 0o041777},
		{name: "console", mode: 0o020600, maj: 5, min: 1},
		{name: "empty", mode: 0o100644},
		{name: "odd", data: "abc", mode: 0o100644},
	}
	if len(all) != len(want) {
		t.Fatalf("got %d entries: %+v", len(all), all)
	}
	for i := range want {
		if all[i] != want[i] {
			t.Errorf("entry %d = %+v, want %+v", i, all[i], want[i])
		}
	}
	if !bytes.Equal(archive, writeSample(t)) {
		t.Error("the same entries gave different bytes")
	}
}

// The system cpio (GNU) must read our archives the way the kernel does.
func TestCpioReadableByGNUCpio(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("cpio not installed (Debian package cpio); the in-package reader test covers the format")
	}
	dir := t.TempDir()
	cmd := exec.Command(cpio, "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(writeSample(t))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v: %s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "bin/hello")); err != nil || string(b) != "hello" {
		t.Errorf("bin/hello = %q, %v", b, err)
	}
	if l, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || l != "/bin/busybox" {
		t.Errorf("bin/sh -> %q, %v", l, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "tmp")); err != nil || st.Mode()&fs.ModeSticky == 0 || st.Mode().Perm() != 0o777 {
		t.Errorf("tmp mode = %v, %v", st.Mode(), err)
	}
	list := exec.Command(cpio, "-it", "--quiet")
	list.Stdin = bytes.NewReader(writeSample(t))
	names, err := list.Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(names)); strings.Join(got, " ") != "bin bin/hello bin/sh tmp console empty odd" {
		t.Errorf("cpio -t lists %v", got)
	}
}

func TestCpioRejectsBadNames(t *testing.T) {
	for _, name := range []string{"", "/abs", "nul\x00"} {
		w := NewCpioWriter(io.Discard)
		if err := w.Dir(name, 0o755); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	w := NewCpioWriter(io.Discard)
	if err := w.File("short", 0o644, 10, strings.NewReader("abc")); err == nil {
		t.Error("short file accepted")
	}
}
