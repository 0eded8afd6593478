package agent

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/agentproto"
)

// Version is the agent protocol version this client speaks.
const Version = agentproto.Version

// Errors. Each wraps an errdefs class.
var (
	// ErrConnectionLost: the channel to the guest agent broke (QEMU exited,
	// the VM was restored elsewhere, Close was called, keepalive failed).
	// A call in flight at that moment returns it; its outcome in the guest
	// is unknown, but an exec's process group has been killed by the guest.
	ErrConnectionLost = fmt.Errorf("guest agent connection lost: %w", errdefs.ErrUnavailable)
	// ErrVersionMismatch: host and guest speak different protocol versions;
	// rebuild the initramfs with the zygote-init of this zygote.
	ErrVersionMismatch = fmt.Errorf("guest agent protocol version mismatch: %w", errdefs.ErrNotImplemented)
	// ErrAlreadyConfigured: Configure was already applied in this boot.
	ErrAlreadyConfigured = fmt.Errorf("guest already configured: %w", errdefs.ErrInvalidState)
)

// Hello is what the guest agent says when a connection starts.
type Hello struct {
	// Version is the guest's protocol version (always Version: Dial
	// refuses others).
	Version int
	// BootID is the guest kernel's boot id. Forks restored from one
	// snapshot share it.
	BootID string
	// Configured reports whether Configure already ran in this boot (a
	// restored or adopted VM answers true).
	Configured bool
	Hostname   string
	// Kernel is the guest's kernel release.
	Kernel string
	// Restores counts the Restored calls this boot has seen.
	Restores int
	// Workload is the boot's workload (nil: none started); its Exited is
	// set when it exited, also while no host was connected.
	Workload *agentproto.WorkloadStatus
	// Features are the agent's optional abilities (agentproto.Feature*).
	Features []string
}

// Options tune DialOptions.
type Options struct {
	Logger *slog.Logger
	// KeepAlive is the interval of liveness pings; a ping unanswered for
	// agentproto.WriteTimeout (30 s) drops the connection and closes Done.
	// 0 means 15 s; negative disables pings (a paused VM then keeps the
	// connection open indefinitely).
	KeepAlive time.Duration
}

// Client is a connection to one guest agent. Its methods may be called
// concurrently. When the connection breaks, Done is closed and every call
// fails with ErrConnectionLost; Dial again (the guest serves the new
// connection and kills what the old one left running).
type Client struct {
	path  string
	log   *slog.Logger
	conn  net.Conn
	link  *agentproto.LinkWriter
	sconn *agentproto.SessionConn
	mux   *yamux.Session
	hello Hello

	done      chan struct{}
	closeOnce sync.Once
	errMu     sync.Mutex
	err       error
	wg        sync.WaitGroup
}

// Dial connects to the agent channel at socketPath and returns once the
// agent said Hello. It retries (socket missing, connection refused, no
// hello yet, QEMU gone) until ctx ends. A protocol version mismatch is
// returned at once.
func Dial(ctx context.Context, socketPath string) (*Client, error) {
	return DialOptions(ctx, socketPath, Options{})
}

// DialOptions is Dial with options.
func DialOptions(ctx context.Context, socketPath string, opts Options) (*Client, error) {
	return dialLoop(ctx, socketPath, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socketPath)
	}, opts)
}

// DialFunc is Dial over connections made by dial (for example a
// hypervisor driver's DialAgent). Every error of dial is retried until ctx
// ends: cancel ctx when the VMM is known to be gone.
func DialFunc(ctx context.Context, dial func(context.Context) (net.Conn, error), opts Options) (*Client, error) {
	return dialLoop(ctx, "agent channel", dial, opts)
}

func dialLoop(ctx context.Context, socketPath string, dial func(context.Context) (net.Conn, error), opts Options) (*Client, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.KeepAlive == 0 {
		opts.KeepAlive = 15 * time.Second
	}
	backoff := 10 * time.Millisecond
	var last error
	for attempt := 1; ; attempt++ {
		c, err := dialOnce(ctx, socketPath, dial, opts)
		if err == nil {
			c.log.Debug("agent connected", "attempts", attempt, "boot_id", c.hello.BootID)
			return c, nil
		}
		if errors.Is(err, ErrVersionMismatch) {
			return nil, err
		}
		last = err
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("agent: dial %s: no hello from the guest agent after %d attempts (guest not up yet, "+
				"or another client holds the channel; last: %v): %w", socketPath, attempt, last, ctx.Err())
		case <-t.C:
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}

// dialOnce makes one connection attempt: connect, Hello until Welcome.
func dialOnce(ctx context.Context, path string, dial func(context.Context) (net.Conn, error), opts Options) (*Client, error) {
	conn, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	epoch := newEpoch()
	c := &Client{
		path:  path,
		log:   opts.Logger.With("agent", path),
		conn:  conn,
		link:  agentproto.NewLinkWriter(conn),
		sconn: nil,
		done:  make(chan struct{}),
	}
	c.sconn = agentproto.NewSessionConn(c.link, epoch)
	welcome := make(chan agentproto.Frame, 1)
	readErr := make(chan error, 1)
	c.wg.Go(func() { readErr <- c.readLoop(agentproto.NewLinkReader(conn), epoch, welcome) })

	hh, _ := json.Marshal(agentproto.HostHello{Version: agentproto.Version})
	hello := agentproto.Frame{Kind: agentproto.FrameHello, Epoch: epoch, Payload: hh}
	fail := func(err error) (*Client, error) {
		conn.Close()
		c.sconn.Close()
		c.wg.Wait()
		return nil, err
	}
	// The Hello is repeated until answered: the guest may not be up yet (its
	// port is closed and QEMU leaves our bytes in the socket), or the first
	// Hello may have been swallowed by a frame cut short in a snapshot.
	retry := time.NewTicker(agentproto.HelloRetry)
	defer retry.Stop()
	if err := c.link.WritePadding(); err != nil {
		return fail(err)
	}
	for {
		if err := c.link.WriteFrame(hello); err != nil {
			return fail(err)
		}
		select {
		case f := <-welcome:
			var h agentproto.Hello
			if err := json.Unmarshal(f.Payload, &h); err != nil {
				return fail(fmt.Errorf("agent: bad hello from guest: %w", err))
			}
			if h.Version != agentproto.Version || h.Error != "" {
				return fail(fmt.Errorf("%w: host v%d, guest v%d (%s); rebuild the initramfs with this zygote's zygote-init",
					ErrVersionMismatch, agentproto.Version, h.Version, h.Error))
			}
			c.hello = Hello{Version: h.Version, BootID: h.BootID, Configured: h.Configured,
				Hostname: h.Hostname, Kernel: h.Kernel, Restores: h.Restores, Workload: h.Workload, Features: h.Features}
			return c.start(opts, readErr)
		case err := <-readErr:
			readErr <- err
			return fail(fmt.Errorf("agent: connection closed before hello: %w", err))
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-retry.C:
		}
	}
}

func (c *Client) start(opts Options, readErr chan error) (*Client, error) {
	mux, err := yamux.Client(c.sconn, agentproto.MuxConfig(c.log, max(opts.KeepAlive, 0)))
	if err != nil {
		c.conn.Close()
		c.sconn.Close()
		c.wg.Wait()
		return nil, fmt.Errorf("agent: yamux: %w", err)
	}
	c.mux = mux
	c.wg.Go(func() {
		select {
		case err := <-readErr:
			c.shutdown(fmt.Errorf("%w: %v", ErrConnectionLost, err))
		case <-mux.CloseChan():
			c.shutdown(fmt.Errorf("%w: multiplexer closed (keepalive or protocol failure)", ErrConnectionLost))
			<-readErr // shutdown closed the conn: the read loop ends
		}
	})
	return c, nil
}

// readLoop reads link frames until the connection ends: the first Welcome
// of our epoch goes to welcome, our Data frames to the session.
func (c *Client) readLoop(lr *agentproto.LinkReader, epoch uint64, welcome chan<- agentproto.Frame) error {
	defer c.sconn.Close()
	welcomed := false
	for {
		f, err := lr.ReadFrame()
		if err != nil {
			return err
		}
		if f.Epoch != epoch {
			continue // bytes of a previous session of this guest
		}
		switch f.Kind {
		case agentproto.FrameWelcome:
			if !welcomed {
				welcomed = true
				welcome <- f
			}
		case agentproto.FrameData:
			if !c.sconn.Deliver(f.Payload) {
				return ErrConnectionLost
			}
		}
	}
}

func (c *Client) shutdown(err error) {
	c.closeOnce.Do(func() {
		c.errMu.Lock()
		c.err = err
		c.errMu.Unlock()
		c.sconn.Close()
		c.conn.Close()
		if c.mux != nil {
			c.mux.Close()
		}
		close(c.done)
	})
}

// Hello returns what the agent said when this connection started.
func (c *Client) Hello() Hello { return c.hello }

// Done is closed when the connection is gone.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err says why the connection is gone (nil while it is up).
func (c *Client) Err() error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	return c.err
}

// Close says goodbye to the agent and closes the connection. The guest
// ends the session and kills the process groups of execs still running.
func (c *Client) Close() error {
	select {
	case <-c.done:
	default:
		c.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		c.link.WriteFrame(agentproto.Frame{Kind: agentproto.FrameBye, Epoch: c.sconn.Epoch()})
	}
	c.shutdown(fmt.Errorf("%w: client closed", ErrConnectionLost))
	c.wg.Wait()
	return nil
}

func newEpoch() uint64 {
	var b [8]byte
	rand.Read(b[:])
	if e := binary.BigEndian.Uint64(b[:]); e != 0 {
		return e
	}
	return 1
}

// lost turns a stream failure into ErrConnectionLost once the connection
// is gone, and keeps other errors.
func (c *Client) lost(op string, err error) error {
	select {
	case <-c.done:
		return fmt.Errorf("agent %s: %w", op, c.Err())
	default:
	}
	if c.mux.IsClosed() || errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, agentproto.ErrSessionClosed) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, yamux.ErrConnectionReset) || errors.Is(err, yamux.ErrStreamClosed) {
		return fmt.Errorf("agent %s: %w: %v", op, ErrConnectionLost, err)
	}
	return fmt.Errorf("agent %s: %w", op, err)
}

// openStream opens a stream and arranges for ctx to unblock it.
func (c *Client) openStream(ctx context.Context, op string) (*yamux.Stream, func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("agent %s: %w", op, err)
	}
	st, err := c.mux.OpenStream()
	if err != nil {
		return nil, nil, c.lost(op, err)
	}
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Now()) })
	return st, func() { stop(); st.Close() }, nil
}

// call runs one request/response exchange.
func (c *Client) call(ctx context.Context, req agentproto.Request) (agentproto.Response, error) {
	st, done, err := c.openStream(ctx, req.Op)
	if err != nil {
		return agentproto.Response{}, err
	}
	defer done()
	return c.exchange(ctx, st, req.Op, req)
}

// exchange sends req on st and reads its response; errors name op. A
// stream that goes on after the response (a copy) is the caller's.
func (c *Client) exchange(ctx context.Context, st *yamux.Stream, op string, req agentproto.Request) (agentproto.Response, error) {
	var resp agentproto.Response
	if err := agentproto.WriteJSON(st, agentproto.MsgRequest, req); err != nil {
		return resp, c.ctxOrLost(ctx, op, err)
	}
	if err := agentproto.ReadJSON(st, agentproto.MsgResponse, &resp); err != nil {
		return resp, c.ctxOrLost(ctx, op, err)
	}
	if resp.Error != nil {
		return resp, fmt.Errorf("agent %s: %w", op, remoteError(resp.Error))
	}
	return resp, nil
}

func (c *Client) ctxOrLost(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("agent %s: %w", op, ctx.Err())
	}
	return c.lost(op, err)
}

// RemoteError is an error the guest agent reported. It unwraps to the
// matching errdefs class.
type RemoteError struct {
	Code    string
	Message string
	// ExitCode is 127 or 126 when Configure failed because the workload
	// could not start (not found, not executable); 0 otherwise.
	ExitCode int
}

func (e *RemoteError) Error() string { return "guest: " + e.Message }

func (e *RemoteError) Unwrap() error {
	switch e.Code {
	case agentproto.CodeInvalidArgument:
		return errdefs.ErrInvalidArgument
	case agentproto.CodeAlreadyConfigured:
		return ErrAlreadyConfigured
	case agentproto.CodeNotFound:
		return errdefs.ErrNotFound
	case agentproto.CodeNotImplemented:
		return errdefs.ErrNotImplemented
	}
	return nil
}

func remoteError(e *agentproto.Error) error {
	return &RemoteError{Code: e.Code, Message: e.Message, ExitCode: e.ExitCode}
}

// Ping checks that the agent answers.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.call(ctx, agentproto.Request{Op: agentproto.OpPing})
	return err
}

// Config is the once-per-boot configuration.
type Config struct {
	Hostname string
	// Command is the workload, started in its own session with stdin on
	// /dev/null and stdout/stderr on the guest console. Empty: no workload.
	// The initramfs form; exclusive with Process.
	Command []string
	Env     map[string]string

	// Network configures the guest NIC before the workload starts.
	Network *agentproto.NetworkConfig
	// Root is the workload's root filesystem from disks; Volumes are
	// mounted into it. The workload and every exec run chrooted there.
	Root    *agentproto.RootFS
	Volumes []agentproto.Volume
	// Process is the image's workload (args, env, working dir, user).
	Process *agentproto.Process
}

// Configure is sent once per boot, when Hello().Configured is false: it
// sets the hostname and the network, assembles the root filesystem and
// starts the workload. A second Configure in the same boot fails with
// ErrAlreadyConfigured; a workload that cannot start fails with
// errdefs.ErrInvalidArgument, a *RemoteError whose ExitCode is 127 (not
// found) or 126 (not executable), and leaves the guest unconfigured.
func (c *Client) Configure(ctx context.Context, cfg Config) error {
	if (cfg.Root != nil || cfg.Process != nil || cfg.Network != nil || len(cfg.Volumes) > 0) && !slices.Contains(c.hello.Features, agentproto.FeatureWorkload) {
		// An older agent would drop these fields and "succeed".
		return fmt.Errorf("agent configure: the guest agent cannot run an image workload (no %q feature; "+
			"boot the instance with this zygote's initramfs): %w", agentproto.FeatureWorkload, errdefs.ErrNotImplemented)
	}
	_, err := c.call(ctx, agentproto.Request{Op: agentproto.OpConfigure, Configure: &agentproto.ConfigureRequest{
		Hostname: cfg.Hostname, Command: cfg.Command, Env: cfg.Env,
		Network: cfg.Network, Root: cfg.Root, Volumes: cfg.Volumes, Process: cfg.Process,
	}})
	return err
}

// RestoreInfo is what the guest needs after a restore.
type RestoreInfo struct {
	// Now is the host's wall clock; zero means time.Now() at the call.
	Now time.Time
	// Entropy is mixed into the guest kernel RNG and credited; nil means 64
	// fresh bytes from crypto/rand. At least 32 bytes are needed for the
	// guest to reseed its CRNG.
	Entropy []byte
	// Hostname, when not empty, replaces the guest's hostname.
	Hostname string
	// Network is the fork's network identity (wave 2). The current agent
	// refuses it with errdefs.ErrNotImplemented before changing anything.
	Network *agentproto.NetworkIdentity
}

// RestoreResult is what the guest did on Restored.
type RestoreResult struct {
	// ClockStep is how far the guest clock moved.
	ClockStep time.Duration
	// EntropyCredited is the number of bits RNDADDENTROPY credited.
	EntropyCredited int
	// Reseeded reports that the CRNG reseeded (RNDRESEEDCRNG).
	Reseeded bool
	// EntropyAvail is the kernel's entropy_avail afterwards.
	EntropyAvail int
	Hostname     string
}

// Restored tells the agent the VM was just restored: it steps the clock,
// reseeds the kernel RNG and applies the new identity.
func (c *Client) Restored(ctx context.Context, info RestoreInfo) error {
	_, err := c.RestoredResult(ctx, info)
	return err
}

// RestoredResult is Restored, returning what the guest did.
func (c *Client) RestoredResult(ctx context.Context, info RestoreInfo) (RestoreResult, error) {
	entropy := info.Entropy
	if entropy == nil {
		entropy = make([]byte, 64)
		rand.Read(entropy)
	}
	now := info.Now
	if now.IsZero() {
		now = time.Now()
	}
	resp, err := c.call(ctx, agentproto.Request{Op: agentproto.OpRestored, Restored: &agentproto.RestoredRequest{
		UnixNano: now.UnixNano(), Entropy: entropy, Hostname: info.Hostname, Network: info.Network,
	}})
	if err != nil {
		return RestoreResult{}, err
	}
	r := resp.Restored
	if r == nil {
		return RestoreResult{}, fmt.Errorf("agent restored: empty result from guest")
	}
	return RestoreResult{ClockStep: time.Duration(r.ClockStepNanos), EntropyCredited: r.EntropyCredited,
		Reseeded: r.Reseeded, EntropyAvail: r.EntropyAvail, Hostname: r.Hostname}, nil
}

// Shutdown asks the agent to sync, stop processes (SIGTERM, then SIGKILL
// after a grace of 3 s) and power the VM off; it returns once the agent
// acknowledged. The VMM process exits by itself shortly after.
func (c *Client) Shutdown(ctx context.Context) error {
	_, err := c.call(ctx, agentproto.Request{Op: agentproto.OpShutdown})
	return err
}

// Signal sends sig to the process group of a running exec (id from
// ExecRequest.Started).
func (c *Client) Signal(ctx context.Context, id uint64, sig syscall.Signal) error {
	_, err := c.call(ctx, agentproto.Request{Op: agentproto.OpSignal, Signal: &agentproto.SignalRequest{ID: id, Signal: int(sig)}})
	return err
}

// Resize sets the terminal size of a TTY exec.
func (c *Client) Resize(ctx context.Context, id uint64, rows, cols uint16) error {
	_, err := c.call(ctx, agentproto.Request{Op: agentproto.OpResize, Resize: &agentproto.ResizeRequest{ID: id, Rows: rows, Cols: cols}})
	return err
}

func decodeJSON(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode guest message: %w", err)
	}
	return nil
}
