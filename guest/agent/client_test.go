package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
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

// These tests run the real agent (guest/initd) in the test process over a
// test double of the virtio-serial port; vm_test.go repeats the important
// ones against a real guest.

func dial(t *testing.T, path string) *agent.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := agent.Dial(ctx, path)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type result struct {
	code           int
	stdout, stderr string
	err            error
}

func run(ctx context.Context, c *agent.Client, stdin io.Reader, argv ...string) result {
	var out, errb bytes.Buffer
	code, err := c.Exec(ctx, agent.ExecRequest{Command: argv, Stdin: stdin, Stdout: &out, Stderr: &errb})
	return result{code, out.String(), errb.String(), err}
}

// pidGone waits until pid no longer exists (or is a zombie nobody reaped).
func pidGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if f := strings.Fields(string(b)); len(f) > 2 && f[2] == "Z" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("process %d still alive", pid)
}

// startSleep starts `sleep 1000` in the guest and returns its pid and where
// Exec's outcome will arrive.
func startSleep(ctx context.Context, c *agent.Client) (int, <-chan result) {
	pids := make(chan int, 1)
	done := make(chan result, 1)
	go func() {
		code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"sleep", "1000"}, Started: func(_ uint64, pid int) { pids <- pid }})
		done <- result{code: code, err: err}
	}()
	return <-pids, done
}

func TestDialWaitsForAgent(t *testing.T) {
	dir, err := os.MkdirTemp("", "agenttest")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "agent.sock")

	// A host that connects before the guest's port exists keeps trying.
	type dialed struct {
		c   *agent.Client
		err error
	}
	ch := make(chan dialed, 1)
	ctx := testCtx(t)
	go func() {
		c, err := agent.Dial(ctx, sock)
		ch <- dialed{c, err}
	}()
	// QEMU's socket is there before the guest opened its port: the host's
	// Hello waits in the socket.
	port, err := initdtest.NewSocketPort(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer port.Close()
	if err := port.WaitHost(ctx); err != nil {
		t.Fatal(err)
	}
	// Now the guest agent comes up on that port.
	initdtest.Serve(t, port, initdtest.Options{BootID: "late-boot"})
	d := <-ch
	if d.err != nil {
		t.Fatalf("Dial: %v", d.err)
	}
	defer d.c.Close()
	if h := d.c.Hello(); h.BootID != "late-boot" || h.Version != agent.Version || h.Configured {
		t.Fatalf("hello = %+v", h)
	}
	if err := d.c.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

func TestDialFunc(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{BootID: "via-func"})
	calls := 0
	c, err := agent.DialFunc(testCtx(t), func(ctx context.Context) (net.Conn, error) {
		calls++
		if calls < 3 {
			return nil, errors.New("VMM not ready")
		}
		var d net.Dialer
		return d.DialContext(ctx, "unix", a.Socket)
	}, agent.Options{})
	if err != nil {
		t.Fatalf("DialFunc: %v", err)
	}
	defer c.Close()
	if c.Hello().BootID != "via-func" || calls != 3 {
		t.Fatalf("hello %+v after %d dials", c.Hello(), calls)
	}
}

func TestDialGivesUpWithContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := agent.Dial(ctx, "/nonexistent/agent.sock")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no hello") {
		t.Fatalf("Dial = %v, want a deadline error saying no hello", err)
	}
}

func TestConfigureOncePerBoot(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)
	err := c.Configure(ctx, agent.Config{Hostname: "vm-1", Command: []string{"sh", "-c", "echo workload-ran-$GREETING"}, Env: map[string]string{"GREETING": "hi"}})
	if err != nil {
		t.Fatalf("Configure: %v", err)
	}
	err = c.Configure(ctx, agent.Config{Hostname: "vm-2"})
	if !errors.Is(err, agent.ErrAlreadyConfigured) || !errdefs.IsInvalidState(err) {
		t.Fatalf("second Configure = %v, want ErrAlreadyConfigured", err)
	}
	if h := a.System.Hostname(); h != "vm-1" {
		t.Errorf("hostname = %q", h)
	}
	c.Close()
	c2 := dial(t, a.Socket)
	if h := c2.Hello(); !h.Configured || h.Hostname != "vm-1" {
		t.Errorf("hello after configure = %+v", h)
	}
	waitFileContains(t, a.WorkloadLog, "workload-ran-hi")
}

func TestConfigureRejectsBadInput(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)
	if err := c.Configure(ctx, agent.Config{Hostname: "bad host!"}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("bad hostname: %v", err)
	}
	if err := c.Configure(ctx, agent.Config{Command: []string{"/no/such/workload"}}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("missing workload: %v", err)
	}
	// Nothing was configured: a good Configure still works.
	if err := c.Configure(ctx, agent.Config{Hostname: "ok"}); err != nil {
		t.Fatalf("Configure after failures: %v", err)
	}
}

func waitFileContains(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never contained %q; has %q", path, want, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestExecBasics(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)

	if r := run(ctx, c, nil, "echo", "hello"); r.err != nil || r.code != 0 || r.stdout != "hello\n" {
		t.Errorf("echo: %+v", r)
	}
	if r := run(ctx, c, nil, "sh", "-c", "echo out; echo err >&2; exit 3"); r.err != nil || r.code != 3 || r.stdout != "out\n" || r.stderr != "err\n" {
		t.Errorf("exit 3: %+v", r)
	}
	if r := run(ctx, c, strings.NewReader("line1\nline2\n"), "cat"); r.err != nil || r.code != 0 || r.stdout != "line1\nline2\n" {
		t.Errorf("cat: %+v", r)
	}
	if r := run(ctx, c, nil, "no-such-command-xyz"); r.err != nil || r.code != 127 || !strings.Contains(r.stderr, "no-such-command-xyz") {
		t.Errorf("missing command: %+v", r)
	}
	var out bytes.Buffer
	code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"pwd"}, Cwd: "/no/such/dir", Stdout: &out, Stderr: &out})
	if err != nil || code != 127 || !strings.Contains(out.String(), "no such file") {
		t.Errorf("bad cwd: %d %v %q", code, err, out.String())
	}
	out.Reset()
	code, err = c.Exec(ctx, agent.ExecRequest{Command: []string{"sh", "-c", "echo $FOO; pwd"}, Env: map[string]string{"FOO": "bar"}, Cwd: "/tmp", Stdout: &out})
	if err != nil || code != 0 || out.String() != "bar\n/tmp\n" {
		t.Errorf("env+cwd: %d %v %q", code, err, out.String())
	}
	if r := run(ctx, c, nil, "sh", "-c", "kill -TERM $$"); r.err != nil || r.code != 128+15 {
		t.Errorf("killed by SIGTERM: %+v", r)
	}
	if _, err := c.Exec(ctx, agent.ExecRequest{}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("empty command: %v", err)
	}
	if err := c.Signal(ctx, 999999, syscall.SIGTERM); !errdefs.IsNotFound(err) {
		t.Errorf("signal unknown exec: %v", err)
	}
}

// countWriter counts bytes and checks they are all zero.
type countWriter struct {
	n       int64
	nonzero bool
}

func (w *countWriter) Write(p []byte) (int, error) {
	for _, b := range p {
		if b != 0 {
			w.nonzero = true
		}
	}
	w.n += int64(len(p))
	return len(p), nil
}

func TestExecLargeStreams(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)

	const size = 20 << 20
	var w countWriter
	code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"head", "-c", strconv.Itoa(size), "/dev/zero"}, Stdout: &w})
	if err != nil || code != 0 || w.n != size || w.nonzero {
		t.Fatalf("20 MiB out: code %d err %v got %d bytes (nonzero %v)", code, err, w.n, w.nonzero)
	}
	// Both directions at once: cat echoes 8 MiB back while we still send.
	in := bytes.Repeat([]byte{0}, 8<<20)
	w = countWriter{}
	code, err = c.Exec(ctx, agent.ExecRequest{Command: []string{"cat"}, Stdin: bytes.NewReader(in), Stdout: &w})
	if err != nil || code != 0 || w.n != int64(len(in)) {
		t.Fatalf("8 MiB echo: code %d err %v got %d bytes", code, err, w.n)
	}
}

// A consumer that stops reading stalls only its own exec (flow control):
// the guest stops, nothing buffers without bound, other execs go on.
func TestExecSlowReaderDoesNotBlockOthers(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)

	const size = 4 << 20
	pr, pw := io.Pipe()
	done := make(chan result, 1)
	go func() {
		code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"head", "-c", strconv.Itoa(size), "/dev/zero"}, Stdout: pw})
		pw.Close()
		done <- result{code: code, err: err}
	}()
	// Read a little, then stall the consumer while other execs run.
	buf := make([]byte, 1024)
	if _, err := io.ReadFull(pr, buf); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if r := run(ctx, c, nil, "echo", strconv.Itoa(i)); r.err != nil || r.stdout != strconv.Itoa(i)+"\n" {
			t.Fatalf("exec during stalled stream: %+v", r)
		}
	}
	n, _ := io.Copy(io.Discard, pr)
	r := <-done
	if r.err != nil || r.code != 0 || n+1024 != size {
		t.Fatalf("stalled stream: %+v after %d bytes", r, n+1024)
	}
}

func TestExecConcurrent(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Go(func() {
			want := fmt.Sprintf("exec-%d", i)
			r := run(ctx, c, strings.NewReader(want), "sh", "-c", "cat; echo; echo err-$0 >&2", want)
			if r.err != nil || r.code != 0 || r.stdout != want+"\n" || r.stderr != "err-"+want+"\n" {
				errs <- fmt.Errorf("exec %d: %+v", i, r)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestExecCancelKills(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx, cancel := context.WithCancel(testCtx(t))
	pids := make(chan int, 1)
	go func() {
		// Wait until it runs, then cancel.
		pid := <-pids
		pids <- pid
		cancel()
	}()
	code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"sleep", "1000"}, Started: func(id uint64, pid int) { pids <- pid }})
	if !errors.Is(err, context.Canceled) || code != -1 {
		t.Fatalf("cancelled exec = %d, %v", code, err)
	}
	pidGone(t, <-pids)

	// Timeout: same path, its own message.
	code, err = c.Exec(testCtx(t), agent.ExecRequest{Command: []string{"sleep", "1000"}, Timeout: 300 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("timed-out exec = %d, %v", code, err)
	}
	// The connection is fine afterwards.
	if r := run(testCtx(t), c, nil, "true"); r.err != nil || r.code != 0 {
		t.Fatalf("exec after cancel: %+v", r)
	}
}

func TestExecSignal(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)
	code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"sleep", "1000"}, Started: func(id uint64, pid int) {
		go c.Signal(ctx, id, syscall.SIGINT)
	}})
	if err != nil || code != 128+int(syscall.SIGINT) {
		t.Fatalf("signalled exec = %d, %v", code, err)
	}
}

func TestExecTTY(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)
	var out bytes.Buffer
	code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"sh", "-c", "tty; stty size; echo err >&2"}, TTY: true, Rows: 30, Cols: 100, Stdout: &out})
	if err != nil || code != 0 {
		t.Fatalf("tty exec = %d, %v", code, err)
	}
	s := strings.ReplaceAll(out.String(), "\r", "")
	if !strings.Contains(s, "/dev/pts/") || !strings.Contains(s, "30 100\n") || !strings.Contains(s, "err\n") {
		t.Fatalf("tty output %q", s)
	}
	// Stdin EOF ends cat on a tty too (^D).
	out.Reset()
	code, err = c.Exec(ctx, agent.ExecRequest{Command: []string{"cat"}, TTY: true, Stdin: strings.NewReader("typed\n"), Stdout: &out})
	if err != nil || code != 0 || !strings.Contains(out.String(), "typed") {
		t.Fatalf("tty cat = %d, %v, %q", code, err, out.String())
	}
}

// The host goes away with an exec running: the exec ends with
// ErrConnectionLost on the host, its process is killed in the guest, and a
// new host is served.
func TestDisconnectKillsExecAndRedialWorks(t *testing.T) {
	for _, hide := range []bool{false, true} {
		t.Run(fmt.Sprintf("hide_disconnect=%v", hide), func(t *testing.T) {
			a := initdtest.Start(t, initdtest.Options{HideDisconnects: hide})
			c := dial(t, a.Socket)
			ctx := testCtx(t)
			pid, done := startSleep(ctx, c)
			// The daemon dies: its socket closes.
			c.CloseWithoutBye()
			r := <-done
			if !errors.Is(r.err, agent.ErrConnectionLost) || !errdefs.IsUnavailable(r.err) {
				t.Fatalf("exec in flight = %d, %v; want ErrConnectionLost", r.code, r.err)
			}
			select {
			case <-c.Done():
			default:
				t.Fatal("Done not closed after the connection broke")
			}
			c2 := dial(t, a.Socket)
			// With the disconnect hidden, only the new host's Hello tells
			// the guest; either way the old exec must die.
			pidGone(t, pid)
			if r := run(ctx, c2, nil, "echo", "again"); r.err != nil || r.stdout != "again\n" {
				t.Fatalf("exec after redial: %+v", r)
			}
		})
	}
}

// A guest restored from a snapshot may have half a frame from the old host
// buffered; the new host's bytes follow it. The agent must resynchronise.
func TestResumeMidFrame(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{HideDisconnects: true})
	ctx := testCtx(t)
	old, err := net.Dial("unix", a.Socket)
	if err != nil {
		t.Fatal(err)
	}
	hh, _ := json.Marshal(agentproto.HostHello{Version: agentproto.Version})
	frame, _ := agentproto.AppendFrame(nil, agentproto.Frame{Kind: agentproto.FrameHello, Epoch: 77, Payload: hh})
	data, _ := agentproto.AppendFrame(nil, agentproto.Frame{Kind: agentproto.FrameData, Epoch: 77, Payload: bytes.Repeat([]byte{1}, 5000)})
	old.Write(frame)
	old.Write(data[:2000]) // cut mid-frame
	old.Close()
	c := dial(t, a.Socket)
	if r := run(ctx, c, nil, "echo", "resynced"); r.err != nil || r.stdout != "resynced\n" {
		t.Fatalf("exec after mid-frame cut: %+v", r)
	}
}

func TestRestored(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	ctx := testCtx(t)
	now := time.Now().Add(time.Hour)
	seed := bytes.Repeat([]byte{7}, 48)
	res, err := c.RestoredResult(ctx, agent.RestoreInfo{Now: now, Entropy: seed, Hostname: "fork-1"})
	if err != nil {
		t.Fatalf("Restored: %v", err)
	}
	if res.EntropyCredited != 48*8 || !res.Reseeded || res.Hostname != "fork-1" || res.ClockStep < 59*time.Minute {
		t.Errorf("result = %+v", res)
	}
	rec := a.System.Record()
	if len(rec.ClockSteps) != 1 || !rec.ClockSteps[0].Equal(now) || len(rec.Entropy) != 1 || !bytes.Equal(rec.Entropy[0], seed) || rec.Reseeds != 1 {
		t.Errorf("system record = %+v", rec)
	}
	// Defaults: now and fresh entropy.
	if err := c.Restored(ctx, agent.RestoreInfo{}); err != nil {
		t.Fatal(err)
	}
	rec = a.System.Record()
	if len(rec.Entropy) != 2 || len(rec.Entropy[1]) != 64 || bytes.Equal(rec.Entropy[1], make([]byte, 64)) {
		t.Errorf("default entropy not sent: %+v", rec.Entropy)
	}
	// A network identity is refused before anything changes.
	err = c.Restored(ctx, agent.RestoreInfo{Hostname: "fork-2", Network: &agentproto.NetworkIdentity{MAC: "02:00:00:00:00:01"}})
	if !errdefs.IsNotImplemented(err) {
		t.Fatalf("network identity: %v", err)
	}
	if a.System.Hostname() != "fork-1" || len(a.System.Record().ClockSteps) != 2 {
		t.Error("refused Restored changed the guest")
	}
	c.Close()
	if h := dial(t, a.Socket).Hello(); h.Restores != 2 {
		t.Errorf("hello.Restores = %d, want 2", h.Restores)
	}
}

func TestShutdown(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	c := dial(t, a.Socket)
	if err := c.Shutdown(testCtx(t)); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case <-a.System.PoweredOff():
	case <-time.After(20 * time.Second):
		t.Fatal("agent never powered off")
	}
	if k := a.System.Record().Kills; len(k) == 0 || k[0] != syscall.SIGTERM {
		t.Errorf("kills = %v, want SIGTERM first", k)
	}
}

// A guest speaking another protocol version is refused at once, with both
// versions named.
func TestVersionMismatch(t *testing.T) {
	dir, err := os.MkdirTemp("", "agenttest")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		f, err := agentproto.NewLinkReader(conn).ReadFrame()
		if err != nil {
			return
		}
		h, _ := json.Marshal(agentproto.Hello{Version: 99})
		agentproto.NewLinkWriter(conn).WriteFrame(agentproto.Frame{Kind: agentproto.FrameWelcome, Epoch: f.Epoch, Payload: h})
		io.Copy(io.Discard, conn)
	}()
	_, err = agent.Dial(testCtx(t), sock)
	if !errors.Is(err, agent.ErrVersionMismatch) || !strings.Contains(err.Error(), "guest v99") {
		t.Fatalf("Dial = %v, want version mismatch", err)
	}
}

// The guest refuses a host of another version and says why.
func TestGuestRefusesOtherVersion(t *testing.T) {
	a := initdtest.Start(t, initdtest.Options{})
	conn, err := net.Dial("unix", a.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hh, _ := json.Marshal(agentproto.HostHello{Version: 99})
	agentproto.NewLinkWriter(conn).WriteFrame(agentproto.Frame{Kind: agentproto.FrameHello, Epoch: 5, Payload: hh})
	f, err := agentproto.NewLinkReader(conn).ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	var h agentproto.Hello
	json.Unmarshal(f.Payload, &h)
	if f.Kind != agentproto.FrameWelcome || h.Version != agentproto.Version || !strings.Contains(h.Error, "v99") {
		t.Fatalf("welcome = %v %+v", f.Kind, h)
	}
}
