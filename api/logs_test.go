package api_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/internal/logfile"
)

// TestLogsFollowAcrossRotation: the console log is capped and rotated
// (internal/logfile); a follow keeps streaming across renames to the
// rotated name and across a truncate in place, and a tail taken just after
// a rotation reaches into the previous file.
func TestLogsFollowAcrossRotation(t *testing.T) {
	e := newEnv(t)
	in := e.run(t, "web")
	logPath := filepath.Join(e.h.DataDir, "instances", in.ID, "console.log")
	os.Remove(logPath)
	w, err := logfile.Open(logPath, logfile.Limits{MaxBytes: 64, Files: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	go func() { e.c.Logs(fctx, "web", client.LogOptions{Follow: true, Tail: 0}, pw); pw.Close() }()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// expect writes want (again, until the stream is up) and waits for it.
	expect := func(write func(string), want string) {
		t.Helper()
		write(want)
		deadline := time.After(10 * time.Second)
		for {
			select {
			case <-time.After(300 * time.Millisecond):
				write(want) // the stream may have started after the write
			case got, ok := <-lines:
				if !ok {
					t.Fatalf("stream ended waiting for %q", want)
				}
				if got == want {
					return
				}
			case <-deadline:
				t.Fatalf("no %q in the stream", want)
			}
		}
	}
	// 16-byte lines, 64-byte cap: a rotation every 4 lines.
	put := func(s string) { fmt.Fprintf(w, "%s\n", s) }
	for i := 0; i < 20; i++ {
		expect(put, fmt.Sprintf("rotated %06d", i))
	}
	if _, err := os.Stat(logfile.Rotated(logPath, 2)); err == nil {
		t.Fatal("more files than the cap allows")
	}
	// A file another process appends to is capped by a truncate in place.
	w.Close()
	os.Remove(logfile.Rotated(logPath, 1))
	f, err := os.OpenFile(logPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	appendLine := func(s string) { fmt.Fprintf(f, "%s\n", s) }
	for i := 0; i < 10; i++ {
		expect(appendLine, fmt.Sprintf("appended %05d", i))
		if _, err := logfile.CapAppended(logPath, logfile.Limits{MaxBytes: 40, Files: 2}); err != nil {
			t.Fatal(err)
		}
	}
	cancel()

	// Tail right after a rotation: one line in the live file, the rest
	// from the previous one.
	os.WriteFile(logfile.Rotated(logPath, 1), []byte("one\ntwo\nthree\n"), 0o644)
	os.WriteFile(logPath, []byte("four\n"), 0o644)
	var b strings.Builder
	err = e.c.Logs(ctx, "web", client.LogOptions{Tail: 3}, &b)
	if out := b.String(); err != nil || out != "two\nthree\nfour\n" {
		t.Fatalf("tail 3 across a rotation: %q %v", b.String(), err)
	}
}
