// Package e2e runs the real zygote binary: a daemon with QEMU VMs (TCG
// here, KVM where it works), driven through the Go client and the CLI, on
// a loop-mounted XFS (reflink) and on the ext4 work disk (fallback copy).
// VM boots are few and shared: each test boots one VM and forks it.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/guest/guesttest"
	"github.com/zygote/zygote/internal/proc"
)

var (
	binDir    string // zygote and zygote-init, built once
	zygoteBin string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "zygote-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir, zygoteBin = dir, filepath.Join(dir, "zygote")
	root := repoRoot()
	for _, b := range []struct {
		out, pkg string
		env      []string
	}{
		{zygoteBin, "./cmd/zygote", nil},
		{filepath.Join(dir, "zygote-init"), "./cmd/zygote-init", []string{"CGO_ENABLED=0"}},
	} {
		cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", b.out, b.pkg)
		cmd.Dir, cmd.Env, cmd.Stderr = root, append(os.Environ(), b.env...), os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n", b.pkg, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Dir(wd)
}

var ctx = context.Background()

// daemon is one `zygote serve` process.
type daemon struct {
	t       testing.TB
	dataDir string
	socket  string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	c       *client.Client
	// args are extra `zygote serve` flags for every start.
	args []string
	// netns, when set, is the path of the network namespace the daemon
	// runs in, with networking on (--network). Without it the daemon runs
	// with --network=false: no test gives a VM a network that could reach
	// beyond namespaces the test made (network_test.go).
	netns string
}

// newDaemon prepares a daemon on dataDir (not started) and registers a
// cleanup that removes every instance and checks nothing is left.
func newDaemon(t testing.TB, dataDir string) *daemon {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		guesttest.Unavailable(t, "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
	}
	guesttest.Assets(t) // skips with a reason when no guest kernel was fetched
	sockDir, err := os.MkdirTemp("", "zg-")
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{t: t, dataDir: dataDir, socket: filepath.Join(sockDir, "zygote.sock"), logPath: filepath.Join(sockDir, "serve.log")}
	c, err := client.New(d.socket, "")
	if err != nil {
		t.Fatal(err)
	}
	d.c = c
	t.Cleanup(func() {
		if t.Failed() {
			d.keepConsoles()
		}
		d.cleanup()
		if t.Failed() {
			if raw, err := os.ReadFile(d.logPath); err == nil {
				keep := filepath.Join(os.TempDir(), "zygote-e2e-"+strings.ReplaceAll(t.Name(), "/", "_")+"-"+filepath.Base(sockDir)+".log")
				os.WriteFile(keep, raw, 0o644)
				t.Logf("daemon log kept in %s; last 4 KiB:\n%s", keep, tail(raw, 4096))
			}
		}
		os.RemoveAll(sockDir)
	})
	return d
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// start runs the daemon with extra environment (crash points) and waits
// until it answers.
func (d *daemon) start(env ...string) {
	d.t.Helper()
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	defer logf.Close()
	argv := append([]string{zygoteBin, "serve", "--data-dir", d.dataDir, "--socket", d.socket, "--log-level", "debug"}, d.args...)
	if d.netns == "" {
		argv = append(argv, "--network=false")
	} else {
		// nsenter switches only the network namespace and execs the
		// daemon (same pid); `ip netns exec` would also give it a mount
		// namespace of its own, hiding its pinned slot namespaces.
		argv = append(append([]string{"nsenter", "--net=" + d.netns}, argv...), "--network")
	}
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(d.cmd, d.exited)
	deadline := time.Now().Add(60 * time.Second)
	for d.c.Health(ctx) != nil {
		select {
		case <-d.exited:
			d.t.Fatalf("daemon exited at start; log:\n%s", d.log())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("daemon did not answer in 60 s; log:\n%s", d.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *daemon) log() string {
	raw, _ := os.ReadFile(d.logPath)
	return string(tail(raw, 8192))
}

// kill9 SIGKILLs the daemon, as a crash would; its VMs keep running.
func (d *daemon) kill9() {
	d.cmd.Process.Kill()
	<-d.exited
}

func (d *daemon) running() bool {
	if d.exited == nil {
		return false
	}
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

func (d *daemon) stop() {
	if d.running() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		<-d.exited
	}
}

// keepConsoles appends every instance's console tail to the daemon log,
// so a failed test shows what its guests said.
func (d *daemon) keepConsoles() {
	ents, _ := os.ReadDir(filepath.Join(d.dataDir, "instances"))
	f, err := os.OpenFile(d.logPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	for _, e := range ents {
		raw, err := os.ReadFile(filepath.Join(d.dataDir, "instances", e.Name(), "console.log"))
		if err == nil {
			fmt.Fprintf(f, "\n--- console of %s (last 3 KiB)\n%s\n", e.Name(), tail(raw, 3072))
		}
	}
}

// cleanup deletes every instance through a live daemon, then checks that
// no VMM, instance directory or socket is left, and kills any VMM that is
// (so a failed test does not leak processes into the next).
func (d *daemon) cleanup() {
	t := d.t
	if !d.running() {
		d.start()
	}
	list, err := d.c.ListInstances(ctx, client.ListOptions{})
	if err == nil {
		for _, in := range list {
			if err := d.c.DeleteInstance(ctx, in.ID, true); err != nil {
				t.Errorf("cleanup: delete %s: %v", in.Name, err)
			}
		}
	}
	snaps, _ := d.c.ListSnapshots(ctx, client.SnapshotListOptions{})
	for _, s := range snaps {
		d.c.DeleteSnapshot(ctx, s.ID)
	}
	d.stop()
	// The pager, like the VMs, outlives the daemon by design; a test ends it.
	for _, pid := range d.pids("--socket", filepath.Join(d.dataDir, "pager", "pager.sock")) {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	if pids := d.vmmPIDs(); len(pids) > 0 {
		t.Errorf("VMM processes left after deleting every instance: %v", pids)
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, sub := range []string{"instances", "snapshots"} {
		if ents, _ := os.ReadDir(filepath.Join(d.dataDir, sub)); len(ents) > 0 {
			t.Errorf("%s left after deleting everything: %v", sub, ents)
		}
	}
	if _, err := os.Stat(d.socket); !os.IsNotExist(err) {
		t.Errorf("daemon socket left behind: %v", err)
	}
}

// pidsWhere lists the processes whose argv satisfies match.
func pidsWhere(match func(argv []string) bool) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		if argv, err := proc.Cmdline(pid); err == nil && match(argv) {
			out = append(out, pid)
		}
	}
	return out
}

// pids lists processes whose argv contains args in order.
func (d *daemon) pids(args ...string) []int {
	want := strings.Join(args, "\x00")
	return pidsWhere(func(argv []string) bool { return strings.Contains(strings.Join(argv, "\x00"), want) })
}

// vmmPIDs lists QEMU processes running an instance of this data directory.
func (d *daemon) vmmPIDs() []int {
	want := "mem-path=" + filepath.Join(d.dataDir, "instances")
	return pidsWhere(func(argv []string) bool { return strings.Contains(strings.Join(argv, " "), want) })
}

// run creates an instance and waits until its agent is ready.
func (d *daemon) run(name string, cmd ...string) api.Instance {
	d.t.Helper()
	in, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: name, Cmd: cmd})
	if err != nil {
		d.t.Fatalf("create %s: %v", name, err)
	}
	return d.waitRunning(in.ID)
}

func (d *daemon) waitRunning(ref string) api.Instance {
	d.t.Helper()
	res, err := d.c.WaitForState(ctx, ref, "Running", 3*time.Minute)
	if err != nil || res.State != "Running" {
		d.t.Fatalf("wait for %s to run: %+v %v; log:\n%s", ref, res, err, d.log())
	}
	in, err := d.c.GetInstance(ctx, ref)
	if err != nil {
		d.t.Fatal(err)
	}
	return in
}

// sh runs a shell command in the guest and returns stdout; it fails the
// test on a non-zero exit.
func (d *daemon) sh(ref, script string) string {
	d.t.Helper()
	out, code := d.shCode(ref, script)
	if code != 0 {
		d.t.Fatalf("guest %s: %q exited %d", ref, script, code)
	}
	return out
}

func (d *daemon) shCode(ref, script string) (string, int) {
	d.t.Helper()
	var out, errb bytes.Buffer
	code, err := d.c.Exec(ctx, ref, client.ExecOptions{Command: []string{"sh", "-c", script}, Stdout: &out, Stderr: &errb, WaitForAgent: 60})
	if err != nil {
		d.t.Fatalf("exec in %s: %v (stderr %q)", ref, err, errb.String())
	}
	return strings.TrimSpace(out.String()), code
}

func (d *daemon) instanceDir(id string) string { return filepath.Join(d.dataDir, "instances", id) }

func (d *daemon) memHash(id string) string {
	d.t.Helper()
	f, err := os.Open(filepath.Join(d.instanceDir(id), "memory"))
	if err != nil {
		d.t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}

func (d *daemon) cli(args ...string) (string, int) {
	d.t.Helper()
	cmd := exec.Command(zygoteBin, args...)
	cmd.Env = append(os.Environ(), "ZYGOTE_SOCKET="+d.socket)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), ee.ExitCode()
	} else if err != nil {
		d.t.Fatal(err)
	}
	return out.String(), 0
}

func sameInode(t *testing.T, a, b string) bool {
	t.Helper()
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	if err1 != nil || err2 != nil {
		t.Fatalf("stat: %v %v", err1, err2)
	}
	return os.SameFile(fa, fb)
}
