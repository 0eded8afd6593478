package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/internal/testutil"
)

// One VM: `zygote exec -it` on a real terminal, then `zygote cp` of a
// tree in and out, then large files both ways with the daemon's peak RSS
// watched.
func TestExecTTYAndCopy(t *testing.T) {
	d := newDaemon(t, testutil.XFS(t))
	d.start()
	in, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "box", Size: "512MB"})
	if err != nil {
		t.Fatal(err)
	}
	d.waitRunning(in.ID)

	t.Run("exec -it", func(t *testing.T) { execInteractive(t, d) })
	t.Run("cp tree", func(t *testing.T) { copyTree(t, d) })
	t.Run("cp large files", func(t *testing.T) { copyLarge(t, d) })
}

type termOutput struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (o *termOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

func (o *termOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

func (o *termOutput) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(strings.ReplaceAll(o.String(), "\r", ""), s) {
		if time.Now().After(deadline) {
			t.Fatalf("terminal output %q never contained %q", o.String(), s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func execInteractive(t *testing.T, d *daemon) {
	master, slave, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pty: %v", err)
	}
	defer master.Close()
	defer slave.Close()
	pty.Setsize(master, &pty.Winsize{Rows: 33, Cols: 99})
	before, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(zygoteBin, "exec", "-it", "box", "--", "sh")
	cmd.Env = append(os.Environ(), "ZYGOTE_SOCKET="+d.socket)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()
	out := &termOutput{}
	go io.Copy(out, master)

	master.Write([]byte("tty; stty size; echo marker-$((6*7))\n"))
	out.waitFor(t, "marker-42")
	s := strings.ReplaceAll(out.String(), "\r", "")
	if !strings.Contains(s, "/dev/pts/") || !strings.Contains(s, "33 99\n") {
		t.Fatalf("the guest shell does not see a 33x99 terminal: %q", s)
	}
	raw, _ := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if raw.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != 0 {
		t.Errorf("local terminal not raw during the session: lflag %#x", raw.Lflag)
	}
	pty.Setsize(master, &pty.Winsize{Rows: 40, Cols: 120}) // SIGWINCH to zygote
	// The resize travels CLI → daemon → guest asynchronously: ask until seen.
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(strings.ReplaceAll(out.String(), "\r", ""), "40 120\n") {
		if time.Now().After(deadline) {
			t.Fatalf("resize never reached the guest: %q", out.String())
		}
		master.Write([]byte("stty size\n"))
		time.Sleep(500 * time.Millisecond)
	}
	master.Write([]byte("exit 5\n"))
	select {
	case err := <-exited:
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 5 {
			t.Fatalf("zygote exec -it: %v, want exit status 5; output %q", err, out.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("zygote exec -it did not exit with the shell")
	}
	after, _ := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if *after != *before {
		t.Errorf("local terminal not restored: lflag %#x, was %#x", after.Lflag, before.Lflag)
	}
}

// treeOf lists a host tree: type, mode, mtime (ns), size or link target.
func treeOf(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		st := fi.Sys().(*syscall.Stat_t)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out[rel] = "link " + target
		case fi.IsDir():
			out[rel] = fmt.Sprintf("dir %o %d", st.Mode&0o7777, fi.ModTime().UnixNano())
		default:
			b, _ := os.ReadFile(p)
			out[rel] = fmt.Sprintf("file %o %d %x", st.Mode&0o7777, fi.ModTime().UnixNano(), sha256.Sum256(b))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func copyTree(t *testing.T, d *daemon) {
	src := filepath.Join(t.TempDir(), "tree")
	mt := time.Date(2022, 2, 3, 4, 5, 6, 789000000, time.UTC)
	for _, err := range []error{
		os.MkdirAll(filepath.Join(src, "bin"), 0o755),
		os.MkdirAll(filepath.Join(src, "private", "nested"), 0o700),
		os.WriteFile(filepath.Join(src, "bin", "tool"), []byte("#!/bin/sh\necho tool\n"), 0o755),
		os.WriteFile(filepath.Join(src, "private", "key"), []byte("k3y"), 0o600),
		os.WriteFile(filepath.Join(src, "private", "nested", "suid"), []byte("x"), 0o4755),
		os.WriteFile(filepath.Join(src, "empty"), nil, 0o640),
		os.Symlink("/etc", filepath.Join(src, "etc")),
		os.Symlink("bin/tool", filepath.Join(src, "tool-link")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Chmod(filepath.Join(src, "private", "nested", "suid"), 0o4755); err != nil { // os.Chmod wants os.ModeSetuid
		t.Fatal(err)
	}
	for _, p := range []string{"bin/tool", "private/key", "private/nested/suid", "empty", "bin", "private/nested", "private", "."} {
		os.Chtimes(filepath.Join(src, p), mt, mt)
	}
	want := treeOf(t, src)

	if out, code := d.cli("cp", src, "box:/root/tree"); code != 0 {
		t.Fatalf("zygote cp into the guest: %d %s", code, out)
	}
	// In the guest: the link is a link (to the guest's /etc), modes and
	// mtimes as on the host.
	got := d.sh("box", "readlink /root/tree/etc; ls -ln /root/tree/private/nested/suid; /root/tree/bin/tool; date -u -r /root/tree/private/key +%s")
	if !strings.HasPrefix(got, "/etc\n-rwsr-xr-x") || !strings.Contains(got, "tool\n") || !strings.HasSuffix(got, strconv.FormatInt(mt.Unix(), 10)) {
		t.Fatalf("the tree in the guest: %q", got)
	}

	// Back out, to a new directory: identical to the source.
	host := t.TempDir()
	if out, code := d.cli("cp", "box:/root/tree", filepath.Join(host, "back")); code != 0 {
		t.Fatalf("zygote cp out of the guest: %d %s", code, out)
	}
	back := treeOf(t, filepath.Join(host, "back"))
	for k, v := range want {
		if back[k] != v {
			t.Errorf("round trip: %s = %q, want %q", k, back[k], v)
		}
	}
	if len(back) != len(want) {
		t.Errorf("round trip: %d entries, want %d", len(back), len(want))
	}

	// A guest tree whose symlink points at /etc, copied out: the link is
	// kept as a link and nothing is written through it. The guest also
	// holds a directory named like a host path under the link.
	d.sh("box", "mkdir -p /root/evil && ln -s /etc /root/evil/etc && echo not-yours > /root/evil/note")
	dst := filepath.Join(host, "evil-out")
	hostsBefore, _ := os.ReadFile("/etc/hosts")
	if out, code := d.cli("cp", "box:/root/evil", dst); code != 0 {
		t.Fatalf("cp evil: %d %s", code, out)
	}
	if target, err := os.Readlink(filepath.Join(dst, "etc")); err != nil || target != "/etc" {
		t.Fatalf("guest link on the host: %q %v", target, err)
	}
	if hostsAfter, _ := os.ReadFile("/etc/hosts"); !bytes.Equal(hostsBefore, hostsAfter) {
		t.Fatal("/etc/hosts changed")
	}
	// docker cp's "/." suffix: the contents, into an existing directory.
	flat := t.TempDir()
	if out, code := d.cli("cp", "box:/root/tree/.", flat); code != 0 {
		t.Fatalf("cp /.: %d %s", code, out)
	}
	if _, err := os.Lstat(filepath.Join(flat, "bin", "tool")); err != nil {
		t.Fatalf("cp /.: %v", err)
	}
}

func statusKB(t testing.TB, pid int, field string) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

func copyLarge(t *testing.T, d *daemon) {
	// Sized to run in seconds under TCG (≈10 MB/s out, ≈4 MB/s in);
	// BenchmarkCopyLargeFile moves 1 GiB and prints MB/s.
	const outSize, inSize = 48 << 20, 24 << 20
	const bound = 16 << 20 // far below either file
	d.sh("box", fmt.Sprintf("dd if=/dev/urandom of=/root/big bs=1M count=%d 2>/dev/null", outSize>>20))
	guestSum := strings.Fields(d.sh("box", "sha256sum /root/big"))[0]
	dst := filepath.Join(t.TempDir(), "big")
	var took time.Duration
	growth := peakGrowth(t, d, func() {
		begin := time.Now()
		if out, code := d.cli("cp", "box:/root/big", dst); code != 0 {
			t.Fatalf("cp out: %d %s", code, out)
		}
		took = time.Since(begin)
	})
	b, _ := os.ReadFile(dst)
	if fmt.Sprintf("%x", sha256.Sum256(b)) != guestSum {
		t.Fatal("the file copied out differs from the guest's")
	}
	t.Logf("out of the guest: %d MiB in %v (%.1f MB/s); daemon peak RSS growth %.1f MiB",
		outSize>>20, took.Round(time.Millisecond), float64(outSize)/took.Seconds()/1e6, float64(growth)/(1<<20))
	if growth > bound {
		t.Errorf("copying %d MiB out grew the daemon's peak RSS by %d MiB: not streamed", outSize>>20, growth>>20)
	}

	src := filepath.Join(t.TempDir(), "up")
	data := make([]byte, inSize)
	rand.Read(data)
	os.WriteFile(src, data, 0o644)
	growth = peakGrowth(t, d, func() {
		begin := time.Now()
		if out, code := d.cli("cp", src, "box:/root/up"); code != 0 {
			t.Fatalf("cp in: %d %s", code, out)
		}
		took = time.Since(begin)
	})
	if got := strings.Fields(d.sh("box", "sha256sum /root/up"))[0]; got != fmt.Sprintf("%x", sha256.Sum256(data)) {
		t.Fatal("the file copied in differs from the host's")
	}
	t.Logf("into the guest: %d MiB in %v (%.1f MB/s); daemon peak RSS growth %.1f MiB",
		inSize>>20, took.Round(time.Millisecond), float64(inSize)/took.Seconds()/1e6, float64(growth)/(1<<20))
	if growth > bound {
		t.Errorf("copying %d MiB in grew the daemon's peak RSS by %d MiB: not streamed", inSize>>20, growth>>20)
	}
}
