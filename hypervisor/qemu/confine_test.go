package qemu_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/guest/guesttest"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/hypervisor/qemu"
	"github.com/zygote/zygote/internal/logfile"
	"github.com/zygote/zygote/internal/testutil"
)

func guestSh(t testing.TB, vm hypervisor.VM, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c, err := agent.DialFunc(ctx, vm.DialAgent, agent.Options{})
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	defer c.Close()
	if !c.Hello().Configured {
		if err := c.Configure(ctx, agent.Config{Hostname: "confined"}); err != nil {
			t.Fatal(err)
		}
	}
	var out, errb bytes.Buffer
	code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"sh", "-c", script}, Stdout: &out, Stderr: &errb})
	if err != nil || code != 0 {
		t.Fatalf("exec %q: %d %v %s", script, code, err, errb.String())
	}
	return strings.TrimSpace(out.String())
}

// procStatus returns the fields of /proc/<pid>/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// checkConfined: the VMM runs under a seccomp filter, without any
// capability, and its guest RAM is not advised as huge pages.
func checkConfined(t *testing.T, vm hypervisor.VM, dir string) {
	t.Helper()
	pid := vm.Process().PID
	st := procStatus(t, pid)
	for k, want := range map[string]string{
		"Seccomp": "2", "NoNewPrivs": "1",
		"CapEff": "0000000000000000", "CapPrm": "0000000000000000", "CapBnd": "0000000000000000", "CapAmb": "0000000000000000",
	} {
		if st[k] != want {
			t.Errorf("VMM pid %d: %s = %q, want %q", pid, k, st[k], want)
		}
	}
	smaps, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	mem := filepath.Join(dir, "memory")
	i := bytes.Index(smaps, []byte(mem))
	if i < 0 {
		t.Fatalf("VMM does not map %s", mem)
	}
	flags, _, _ := strings.Cut(string(smaps[i:])[strings.Index(string(smaps[i:]), "VmFlags:"):], "\n")
	if strings.Contains(flags+" ", " hg ") {
		t.Errorf("guest RAM is advised as huge pages (%s): a 4 KiB guest write would dirty a 2 MiB folio", flags)
	}
}

// TestConfinedVMMAndCappedConsole boots a real guest with a 64 KiB log
// cap: QEMU runs confined through boot, standby, restore and adoption, and
// a guest printing 8× the cap leaves console.log and console.1.log each
// within it, with the newest output in console.log.
func TestConfinedVMMAndCappedConsole(t *testing.T) {
	guesttest.QEMU(t)
	testutil.RequirePrivileged(t, "the test checks that the VMM drops root's capabilities")
	assets := guesttest.Assets(t)
	limits := logfile.Limits{MaxBytes: 64 << 10, Files: 2}
	d, err := qemu.New(qemu.Config{
		ShareFile: func(ctx context.Context, src, dst string) error {
			_, err := clone.File(ctx, src, dst, clone.Options{NoSync: true, Logger: slog.New(slog.DiscardHandler)})
			return err
		},
		LogLimits: limits,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	spec := hypervisor.Spec{ID: "confined0", Dir: dir, VCPUs: 1, MemoryBytes: 256 << 20}
	vm, state, err := d.Boot(ctx, spec, hypervisor.BootAssets{Kernel: assets.Kernel, Initramfs: assets.Initramfs})
	if err != nil {
		t.Fatal(err)
	}
	spec.DriverState = state
	defer func() { vm.Quit(ctx) }()
	guestSh(t, vm, "true")
	checkConfined(t, vm, dir)

	// 512 KiB of console output in 64-byte lines, then a marker.
	guestSh(t, vm, `i=0; while [ $i -lt 8192 ]; do echo "console flood line $i ......................................" ; i=$((i+1)); done > /dev/console; echo flood-done > /dev/console`)
	console := filepath.Join(dir, hypervisor.ConsoleLog)
	waitFor(t, console, "flood-done")
	checkCapped(t, console, limits)

	// Standby and restore work under the sandbox; the restored VMM is
	// confined too and its console drained.
	if err := vm.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.SaveState(ctx); err != nil {
		t.Fatalf("save state under -sandbox: %v", err)
	}
	vm.Quit(ctx)
	if vm, err = d.Restore(ctx, spec); err != nil {
		t.Fatalf("restore under -sandbox: %v", err)
	}
	checkConfined(t, vm, dir)
	guestSh(t, vm, "echo after-restore > /dev/console")
	waitFor(t, console, "after-restore")

	// A restarted daemon adopts the VMM and drains its console again.
	p := vm.Process()
	vm.Close()
	if vm, err = d.Attach(ctx, spec, p); err != nil {
		t.Fatal(err)
	}
	guestSh(t, vm, "echo after-adopt > /dev/console")
	waitFor(t, console, "after-adopt")
	checkCapped(t, console, limits)
	if err := vm.Pause(ctx); err != nil {
		t.Fatalf("pause the adopted VMM: %v", err)
	}
}

// waitFor waits until marker is in the capped log at path. It reads the
// rotated file and the live one joined: the agent's "host session ended"
// line follows every command, and when the live file is near its cap that
// line rotates the marker (or part of it) into the previous file.
func waitFor(t *testing.T, path, marker string) {
	t.Helper()
	deadline := time.Now().Add(120 * time.Second)
	for time.Now().Before(deadline) {
		if bytes.Contains(joinedLog(path), []byte(marker)) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	tail := func(p string) string {
		raw, err := os.ReadFile(p)
		if err != nil {
			return err.Error()
		}
		return string(raw[max(0, len(raw)-600):])
	}
	vmmLog := filepath.Join(filepath.Dir(path), hypervisor.VMMLog)
	t.Fatalf("%q never reached %s\n--- end of %s:\n%s\n--- end of %s:\n%s\n--- end of %s:\n%s", marker, path,
		logfile.Rotated(path, 1), tail(logfile.Rotated(path, 1)), path, tail(path), vmmLog, tail(vmmLog))
}

// joinedLog is the previous rotated file followed by the live one.
func joinedLog(path string) []byte {
	prev, _ := os.ReadFile(logfile.Rotated(path, 1))
	live, _ := os.ReadFile(path)
	return append(prev, live...)
}

func checkCapped(t *testing.T, path string, limits logfile.Limits) {
	t.Helper()
	for _, p := range []string{path, logfile.Rotated(path, 1)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("%s: %v (want a rotated pair)", p, err)
		}
		if fi.Size() > limits.MaxBytes {
			t.Errorf("%s: %d bytes, over the %d-byte cap", p, fi.Size(), limits.MaxBytes)
		}
	}
	if _, err := os.Stat(logfile.Rotated(path, 2)); err == nil {
		t.Errorf("%s: a third file exists, the cap is 2 files", logfile.Rotated(path, 2))
	}
}
