package logfile

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRotated(t *testing.T) {
	for in, want := range map[string]string{
		"/d/console.log": "/d/console.1.log",
		"/d/noext":       "/d/noext.1",
	} {
		if got := Rotated(in, 1); got != want {
			t.Errorf("Rotated(%q) = %q, want %q", in, got, want)
		}
	}
}

// sizes returns the sizes of the files in dir by name.
func sizes(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, e := range ents {
		fi, _ := e.Info()
		out[e.Name()] = fi.Size()
	}
	return out
}

func TestWriterStaysUnderTheCap(t *testing.T) {
	for _, tc := range []struct {
		name   string
		limits Limits
		want   []string
	}{
		{"two files", Limits{MaxBytes: 1000, Files: 2}, []string{"c.1.log", "c.log"}},
		{"three files", Limits{MaxBytes: 1000, Files: 3}, []string{"c.1.log", "c.2.log", "c.log"}},
		{"one file", Limits{MaxBytes: 1000, Files: 1}, []string{"c.log"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "c.log")
			w, err := Open(path, tc.limits)
			if err != nil {
				t.Fatal(err)
			}
			// 100 KB in 37-byte lines: 100× the cap.
			var last string
			for i := 0; i < 2700; i++ {
				last = fmt.Sprintf("line %06d %s\n", i, strings.Repeat("x", 24))
				if _, err := w.Write([]byte(last)); err != nil {
					t.Fatal(err)
				}
			}
			w.Close()
			got := sizes(t, dir)
			if len(got) != len(tc.want) {
				t.Fatalf("files %v, want %v", got, tc.want)
			}
			for _, name := range tc.want {
				size, ok := got[name]
				if !ok || size > tc.limits.MaxBytes || size == 0 {
					t.Errorf("%s: %d bytes (present %v), want 1..%d", name, size, ok, tc.limits.MaxBytes)
				}
			}
			raw, _ := os.ReadFile(path)
			if !bytes.HasSuffix(raw, []byte(last)) {
				t.Errorf("the live file does not end with the last line")
			}
			if tc.limits.Files > 1 {
				// Lines stay whole across files, in order.
				older, _ := os.ReadFile(Rotated(path, 1))
				if !strings.HasPrefix(string(raw), "line ") || !bytes.HasSuffix(older, []byte("\n")) {
					t.Errorf("a line was split across a rotation")
				}
			}
		})
	}
}

func TestWriterCutsAnOversizedWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	w, err := Open(path, Limits{MaxBytes: 100, Files: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	big := bytes.Repeat([]byte("a"), 1000)
	big[999] = 'z'
	if n, err := w.Write(big); n != 1000 || err != nil {
		t.Fatalf("write: %d %v", n, err)
	}
	raw, _ := os.ReadFile(path)
	if len(raw) != 100 || raw[99] != 'z' {
		t.Fatalf("kept %d bytes ending %q, want the last 100", len(raw), raw[len(raw)-1])
	}
}

func TestWriterReopensAndContinues(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	os.WriteFile(path, bytes.Repeat([]byte("o"), 90), 0o644)
	w, err := Open(path, Limits{MaxBytes: 100, Files: 2})
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("0123456789\n")) // 90+11 > 100: rotates first
	w.Close()
	if raw, _ := os.ReadFile(path); string(raw) != "0123456789\n" {
		t.Fatalf("live file %q", raw)
	}
	if raw, _ := os.ReadFile(Rotated(path, 1)); len(raw) != 90 {
		t.Fatalf("rotated file has %d bytes, want the 90 it had", len(raw))
	}
}

func TestCapAppended(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vmm.log")
	// Another process's O_APPEND fd.
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	limits := Limits{MaxBytes: 1000, Files: 2}
	for round := 0; round < 5; round++ {
		for i := 0; i < 100; i++ {
			fmt.Fprintf(f, "round %d line %03d\n", round, i) // 19 bytes
		}
		if rotated, err := CapAppended(path, limits); err != nil || !rotated {
			t.Fatalf("round %d: rotated=%v err=%v", round, rotated, err)
		}
	}
	fmt.Fprintf(f, "after\n")
	got := sizes(t, filepath.Dir(path))
	if got["vmm.log"] != 6 || got["vmm.1.log"] != 1000 || len(got) != 2 {
		t.Fatalf("files %v: want vmm.log 6 bytes (appends land at 0 after a truncate) and vmm.1.log 1000", got)
	}
	if rotated, _ := CapAppended(path, limits); rotated {
		t.Fatal("a file under the cap was rotated")
	}
}

func TestWriterRecoversFromAFailedReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	w, err := Open(path, Limits{MaxBytes: 100, Files: 2})
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("before\n"))
	// The state a failed reopen after a rotation leaves (a full disk, say):
	// no file. The next write opens one instead of failing forever.
	w.f.Close()
	w.f = nil
	if _, err := w.Write([]byte("after\n")); err != nil {
		t.Fatalf("write after a failed reopen: %v", err)
	}
	w.Close()
	if _, err := w.Write([]byte("late\n")); err == nil {
		t.Fatal("write after Close succeeded")
	}
	if raw, _ := os.ReadFile(path); string(raw) != "before\nafter\n" {
		t.Fatalf("file holds %q", raw)
	}
}
