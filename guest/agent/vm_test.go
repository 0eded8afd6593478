package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/guest/agentproto"
	"github.com/zygote/zygote/guest/guesttest"
)

// testVM is one QEMU guest booted from guesttest.Assets with the agent
// channel wired the way the QEMU driver wires it.
type testVM struct {
	dir, sock, console string
	qmp                string
	cmd                *exec.Cmd
	exited             chan struct{}
	waitErr            error
	kernelVersion      string
	stderr             bytes.Buffer
	started            time.Time
}

// bootVM starts QEMU (TCG: /dev/kvm is not trusted on the dev machines)
// and stops it (killing it by its pid if still running) when the test
// ends, dumping the console if the test failed.
func bootVM(t testing.TB, extra ...string) *testVM {
	t.Helper()
	vm := startVM(t, extra...)
	t.Cleanup(func() {
		vm.stop()
		if t.Failed() {
			t.Logf("qemu stderr: %s\nguest console:\n%s", vm.stderr.String(), vm.consoleText())
		}
		os.RemoveAll(vm.dir)
	})
	return vm
}

// startVM starts QEMU; the caller must call stop and remove vm.dir. extra
// is appended to the command line (-incoming for a restore).
func startVM(tb testing.TB, extra ...string) *testVM {
	tb.Helper()
	assets := guesttest.Assets(tb)
	qemu := guesttest.QEMU(tb)
	dir, err := os.MkdirTemp("", "zvm") // short: unix socket paths max 107 bytes
	if err != nil {
		tb.Fatal(err)
	}
	vm := &testVM{dir: dir, sock: filepath.Join(dir, "agent.sock"), console: filepath.Join(dir, "console.log"),
		qmp: filepath.Join(dir, "qmp.sock"), exited: make(chan struct{}), kernelVersion: assets.KernelVersion}
	args := []string{
		"-accel", "tcg", "-M", "q35", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", assets.Kernel, "-initrd", assets.Initramfs,
		"-append", "console=ttyS0 quiet panic=-1",
		"-chardev", "file,id=con0,path=" + vm.console,
		"-serial", "chardev:con0",
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "socket,id=agent,path=" + vm.sock + ",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=agent,name=" + agentproto.AgentPortName,
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng-pci,rng=rng0",
		"-qmp", "unix:" + vm.qmp + ",server=on,wait=off",
	}
	vm.cmd = exec.Command(qemu, append(args, extra...)...)
	vm.cmd.Stderr = &vm.stderr
	vm.started = time.Now()
	if err := vm.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		tb.Fatalf("start qemu: %v", err)
	}
	go func() { // ends when QEMU exits; stop kills QEMU if needed
		vm.waitErr = vm.cmd.Wait()
		close(vm.exited)
	}()
	return vm
}

// stop kills the QEMU process this test started (by pid) unless it already
// exited, and waits for it.
func (vm *testVM) stop() {
	select {
	case <-vm.exited:
		return
	default:
	}
	vm.cmd.Process.Kill()
	<-vm.exited
}

func (vm *testVM) consoleText() string {
	b, _ := os.ReadFile(vm.console)
	return string(b)
}

func (vm *testVM) waitConsole(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(vm.consoleText(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("guest console never showed %q", want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// guestPidGone waits until pid no longer exists in the guest.
func guestPidGone(t *testing.T, ctx context.Context, c *agent.Client, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := run(ctx, c, nil, "test", "-e", fmt.Sprintf("/proc/%d", pid))
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.code != 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest process %d survived its session", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func vmDial(tb testing.TB, vm *testVM) *agent.Client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := agent.Dial(ctx, vm.sock)
	if err != nil {
		tb.Fatalf("Dial: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// TestVM boots one real guest and runs the agent protocol against it. The
// subtests share the VM and run in order; the last one powers it off.
func TestVM(t *testing.T) {
	vm := bootVM(t)
	c := vmDial(t, vm)
	t.Logf("QEMU start to agent hello: %v (kernel %s)", time.Since(vm.started).Round(time.Millisecond), vm.kernelVersion)
	ctx := testCtx(t)

	h := c.Hello()
	if h.Version != agent.Version || h.Configured || h.BootID == "" || h.Kernel != vm.kernelVersion {
		t.Fatalf("hello = %+v", h)
	}

	t.Run("Configure", func(t *testing.T) {
		err := c.Configure(ctx, agent.Config{Hostname: "zygote-test", Command: []string{"sh", "-c", "echo workload says $MSG"}, Env: map[string]string{"MSG": "hi"}})
		if err != nil {
			t.Fatal(err)
		}
		vm.waitConsole(t, "workload says hi")
		if err := c.Configure(ctx, agent.Config{}); !errors.Is(err, agent.ErrAlreadyConfigured) {
			t.Fatalf("second Configure = %v", err)
		}
		if r := run(ctx, c, nil, "hostname"); r.stdout != "zygote-test\n" {
			t.Fatalf("hostname: %+v", r)
		}
	})

	t.Run("Exec", func(t *testing.T) {
		if r := run(ctx, c, nil, "echo", "hello"); r.err != nil || r.code != 0 || r.stdout != "hello\n" {
			t.Errorf("echo: %+v", r)
		}
		if r := run(ctx, c, nil, "sh", "-c", "echo to-out; echo to-err >&2; exit 7"); r.err != nil || r.code != 7 || r.stdout != "to-out\n" || r.stderr != "to-err\n" {
			t.Errorf("exit 7: %+v", r)
		}
		if r := run(ctx, c, nil, "no-such-command"); r.err != nil || r.code != 127 || !strings.Contains(r.stderr, "not found") {
			t.Errorf("missing command: %+v", r)
		}
		if r := run(ctx, c, strings.NewReader("piped\nstdin\n"), "cat"); r.err != nil || r.code != 0 || r.stdout != "piped\nstdin\n" {
			t.Errorf("stdin: %+v", r)
		}
		if r := run(ctx, c, nil, "cat", "/proc/modules"); !strings.Contains(r.stdout, "virtio_console") || !strings.Contains(r.stdout, "virtio_net") {
			t.Errorf("modules not loaded: %+v", r)
		}
		if r := run(ctx, c, nil, "sh", "-c", "echo x > /dev/shm/note && cat /dev/shm/note && ls /tmp /run /dev/pts >/dev/null"); r.code != 0 || r.stdout != "x\n" {
			t.Errorf("mounts: %+v", r)
		}
		var out bytes.Buffer
		code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"sh", "-c", "tty; stty size"}, TTY: true, Rows: 24, Cols: 80, Stdout: &out})
		if err != nil || code != 0 || !strings.Contains(out.String(), "/dev/pts/") || !strings.Contains(out.String(), "24 80") {
			t.Errorf("tty: %d %v %q", code, err, out.String())
		}
	})

	t.Run("LargeOutput", func(t *testing.T) {
		const size = 20 << 20
		var w countWriter
		begin := time.Now()
		// dd, not busybox head: head writes 4 KiB at a time and is slow
		// under TCG by itself.
		code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"dd", "if=/dev/zero", "bs=64k", "count=320"}, Stdout: &w})
		if err != nil || code != 0 || w.n != size || w.nonzero {
			t.Fatalf("20 MiB: code %d err %v, got %d bytes", code, err, w.n)
		}
		d := time.Since(begin)
		t.Logf("20 MiB guest→host in %v (%.1f MiB/s)", d.Round(time.Millisecond), float64(size>>20)/d.Seconds())
	})

	t.Run("Concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := range 8 {
			wg.Go(func() {
				want := fmt.Sprintf("n%d", i)
				if r := run(ctx, c, strings.NewReader(want), "sh", "-c", "cat; echo; echo e >&2"); r.err != nil || r.stdout != want+"\n" || r.stderr != "e\n" {
					errs <- fmt.Errorf("exec %d: %+v", i, r)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	parent := t
	t.Run("DisconnectAndRedial", func(t *testing.T) {
		pid, done := startSleep(ctx, c)
		c.CloseWithoutBye() // the daemon dies
		if r := <-done; !errors.Is(r.err, agent.ErrConnectionLost) {
			t.Fatalf("exec in flight = %d, %v; want ErrConnectionLost", r.code, r.err)
		}
		c = vmDial(parent, vm) // the later subtests use it
		if h := c.Hello(); !h.Configured || h.Hostname != "zygote-test" {
			t.Errorf("hello after redial = %+v", h)
		}
		// The old session's sleep is killed by the guest.
		guestPidGone(t, ctx, c, pid)
		if r := run(ctx, c, nil, "echo", "back"); r.err != nil || r.stdout != "back\n" {
			t.Fatalf("exec after redial: %+v", r)
		}
	})

	t.Run("Restored", func(t *testing.T) {
		if r := run(ctx, c, nil, "date", "-s", "@1000000000"); r.code != 0 {
			t.Fatalf("set wrong clock: %+v", r)
		}
		res, err := c.RestoredResult(ctx, agent.RestoreInfo{Now: time.Now(), Hostname: "fork-1"})
		if err != nil {
			t.Fatalf("Restored: %v", err)
		}
		t.Logf("restore result: %+v", res)
		if res.EntropyCredited != 512 || !res.Reseeded || res.Hostname != "fork-1" || res.ClockStep < 24*time.Hour*365*10 {
			t.Errorf("restore result = %+v", res)
		}
		r := run(ctx, c, nil, "date", "+%s")
		guestNow, err := strconv.ParseInt(strings.TrimSpace(r.stdout), 10, 64)
		if err != nil {
			t.Fatalf("date: %+v", r)
		}
		if d := guestNow - time.Now().Unix(); d < -60 || d > 60 {
			t.Errorf("guest clock %d is %ds off the host's", guestNow, d)
		}
		if r := run(ctx, c, nil, "hostname"); r.stdout != "fork-1\n" {
			t.Errorf("hostname after restore: %+v", r)
		}
	})

	// Save the running VM to a file, quit it, start a new QEMU from the
	// file: the guest resumes in the middle of the old connection, with
	// an exec of that connection still running. The new host must be
	// served cleanly and the old exec must die.
	t.Run("SaveAndRestore", func(t *testing.T) {
		if r := run(ctx, c, nil, "sh", "-c", "echo kept > /dev/shm/note"); r.code != 0 {
			t.Fatalf("write note: %+v", r)
		}
		// Configured is part of the saved state (even when this subtest
		// runs alone).
		if err := c.Configure(ctx, agent.Config{}); err != nil && !errors.Is(err, agent.ErrAlreadyConfigured) {
			t.Fatal(err)
		}
		bootID := c.Hello().BootID
		pid, done := startSleep(ctx, c)

		state := filepath.Join(vm.dir, "state")
		q := dialQMP(t, vm.qmp)
		q.do(t, "migrate", map[string]any{"uri": "exec:cat > " + state})
		for {
			var st struct {
				Status string `json:"status"`
			}
			q.doInto(t, "query-migrate", nil, &st)
			if st.Status == "completed" {
				break
			}
			if st.Status == "failed" || st.Status == "cancelled" {
				t.Fatalf("migration %s", st.Status)
			}
			time.Sleep(50 * time.Millisecond)
		}
		q.do(t, "quit", nil)
		<-vm.exited
		if r := <-done; !errors.Is(r.err, agent.ErrConnectionLost) {
			t.Fatalf("exec in flight when the VMM quit = %d, %v; want ErrConnectionLost", r.code, r.err)
		}

		begin := time.Now()
		restored := bootVM(parent, "-incoming", "exec:cat "+state)
		c = vmDial(parent, restored)
		t.Logf("restore to hello: %v", time.Since(begin).Round(time.Millisecond))
		vm = restored
		if h := c.Hello(); !h.Configured || h.BootID != bootID {
			t.Errorf("hello after restore = %+v (boot id before: %s)", h, bootID)
		}
		if err := c.Restored(ctx, agent.RestoreInfo{Hostname: "restored-1"}); err != nil {
			t.Fatalf("Restored: %v", err)
		}
		if r := run(ctx, c, nil, "sh", "-c", "cat /dev/shm/note; hostname"); r.stdout != "kept\nrestored-1\n" {
			t.Errorf("after restore: %+v", r)
		}
		// The old connection's exec is killed by the guest.
		guestPidGone(t, ctx, c, pid)
	})

	t.Run("Shutdown", func(t *testing.T) {
		if err := c.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		select {
		case <-vm.exited:
		case <-time.After(60 * time.Second):
			t.Fatal("QEMU did not exit after Shutdown")
		}
		if vm.waitErr != nil {
			t.Errorf("QEMU exit: %v", vm.waitErr)
		}
		select {
		case <-c.Done():
		case <-time.After(30 * time.Second):
			t.Error("client Done not closed after the VM went away")
		}
		if con := vm.consoleText(); strings.Contains(con, "Kernel panic") {
			t.Errorf("guest panicked:\n%s", con)
		}
	})
}

// qmpConn is a minimal QMP client for the save/restore test.
type qmpConn struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialQMP(t *testing.T, sock string) *qmpConn {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("qmp: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	q := &qmpConn{conn: conn, r: bufio.NewReader(conn)}
	if _, err := q.r.ReadString('\n'); err != nil { // greeting
		t.Fatalf("qmp greeting: %v", err)
	}
	q.do(t, "qmp_capabilities", nil)
	return q
}

func (q *qmpConn) do(t *testing.T, cmd string, args map[string]any) {
	t.Helper()
	q.doInto(t, cmd, args, nil)
}

func (q *qmpConn) doInto(t *testing.T, cmd string, args map[string]any, out any) {
	t.Helper()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		t.Fatalf("qmp %s: %v", cmd, err)
	}
	for {
		line, err := q.r.ReadString('\n')
		if err != nil {
			if cmd == "quit" {
				return
			}
			t.Fatalf("qmp %s: %v", cmd, err)
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Desc string `json:"desc"`
			} `json:"error"`
		}
		if json.Unmarshal([]byte(line), &resp) != nil || (resp.Return == nil && resp.Error == nil) {
			continue // an event
		}
		if resp.Error != nil {
			t.Fatalf("qmp %s: %s", cmd, resp.Error.Desc)
		}
		if out != nil {
			json.Unmarshal(resp.Return, out)
		}
		return
	}
}

var (
	benchOnce sync.Once
	benchVM   *testVM
	benchC    *agent.Client
	benchBoot time.Duration
)

// benchClient boots one VM for all benchmarks (benchmark functions run
// several times). TestMain stops it.
func benchClient(b *testing.B) *agent.Client {
	benchOnce.Do(func() {
		benchVM = startVM(b)
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		c, err := agent.Dial(ctx, benchVM.sock)
		if err != nil {
			b.Fatalf("Dial: %v", err)
		}
		benchC = c
		benchBoot = time.Since(benchVM.started)
	})
	if benchC == nil {
		b.Fatal("benchmark VM did not come up")
	}
	return benchC
}

func TestMain(m *testing.M) {
	code := m.Run()
	if benchC != nil {
		benchC.Close()
	}
	if benchVM != nil {
		benchVM.stop()
		os.RemoveAll(benchVM.dir)
	}
	os.Exit(code)
}

// BenchmarkBootToHello reports the time from starting QEMU to the agent's
// Hello (one boot, shared by the benchmarks; ns/op is meaningless).
func BenchmarkBootToHello(b *testing.B) {
	benchClient(b)
	b.ReportMetric(benchBoot.Seconds(), "s/boot")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkExecRoundTrip runs `true` in the guest: stream open, fork+exec
// in the guest, exit status back.
func BenchmarkExecRoundTrip(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"true"}})
		if err != nil || code != 0 {
			b.Fatalf("exec true: %d %v", code, err)
		}
	}
}

// BenchmarkPing is one request/response over the agent channel.
func BenchmarkPing(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	for b.Loop() {
		if err := c.Ping(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExecThroughput measures guest→host stdout bandwidth.
func BenchmarkExecThroughput(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	const size = 16 << 20
	b.SetBytes(size)
	for b.Loop() {
		var w countWriter
		code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"dd", "if=/dev/zero", "bs=64k", "count=256"}, Stdout: &w})
		if err != nil || code != 0 || w.n != size {
			b.Fatalf("exec: %d %v %d", code, err, w.n)
		}
	}
}

// BenchmarkStdinThroughput measures host→guest stdin bandwidth (QEMU feeds
// the guest from the socket 4 KiB at a time).
func BenchmarkStdinThroughput(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	in := make([]byte, 8<<20)
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		var out bytes.Buffer
		code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"wc", "-c"}, Stdin: bytes.NewReader(in), Stdout: &out})
		if err != nil || code != 0 || strings.TrimSpace(out.String()) != strconv.Itoa(len(in)) {
			b.Fatalf("exec: %d %v %q", code, err, out.String())
		}
	}
}
