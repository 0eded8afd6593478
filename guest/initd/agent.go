package initd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/zygote/zygote/guest/agentproto"
)

// Port is the agent's end of the channel to the host: in a guest, the
// virtio-serial port (VirtioPort). Its semantics are those of that port:
// Read returns io.EOF while no host is connected, Write may block while no
// host is connected, and WaitHost blocks until a host is connected again.
// Read and Write are called from different goroutines at the same time.
type Port interface {
	Read(p []byte) (int, error)
	Write(p []byte) (int, error)
	WaitHost(ctx context.Context) error
	Close() error
}

// System is what the agent changes in the machine. PID 1 uses LinuxSystem;
// tests use a fake so that they never touch the host's clock or processes.
type System interface {
	Hostname() string
	SetHostname(name string) error
	// StepClock sets the wall clock and returns how far it moved.
	StepClock(to time.Time) (time.Duration, error)
	// AddEntropy mixes seed into the kernel RNG and credits it; it returns
	// the credited bits.
	AddEntropy(seed []byte) (int, error)
	// ReseedRNG makes the kernel CRNG reseed now from its input pool.
	ReseedRNG() error
	EntropyAvail() int
	Sync()
	// KillAll signals every process but the agent.
	KillAll(sig syscall.Signal) error
	// PowerOff turns the machine off; as PID 1 it does not return.
	PowerOff() error
}

// Config configures an Agent.
type Config struct {
	Port   Port
	System System
	Logger *slog.Logger
	// BootID and Kernel are reported in every Hello.
	BootID string
	Kernel string
	// ReapAll makes the agent reap every child (it is PID 1).
	ReapAll bool
	// WorkloadOutput is the file the workload's stdout and stderr go to
	// (default /dev/console).
	WorkloadOutput string
	// Env is the base environment of the workload and of every exec
	// (default: PATH, HOME=/root, TERM=linux).
	Env []string
	// ShutdownGrace is how long processes get between SIGTERM and SIGKILL
	// at shutdown (default 3 s).
	ShutdownGrace time.Duration
	// Provisioner sets up the NIC and the workload root (nil: Configure
	// refuses a network or a root with not_implemented).
	Provisioner Provisioner
}

// DefaultEnv is the base environment when Config.Env is empty.
var DefaultEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"TERM=linux",
}

// Agent serves the host over a Port. One Agent lives as long as the guest.
//
// Sessions: each host connection is one session (one epoch, see
// agentproto). The agent has at most one session; a Hello with a new epoch,
// an end of stream on the port, a Bye, or the multiplexer failing ends the
// current session, and ending a session SIGKILLs the process groups of its
// execs: their host is gone and nobody can read their output. The workload
// and the configured state belong to the boot, not to a session.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	procs *procTable
	link  *agentproto.LinkWriter

	nextExec atomic.Uint64
	wg       sync.WaitGroup // every goroutine the agent starts

	mu         sync.Mutex // guards the fields below
	configured bool
	restores   int
	workload   *proc
	wlExit     *agentproto.ExitStatus // set once the workload exited
	wl         workloadState
	cur        *session
	shutdown   bool
}

// New returns an agent; Run serves.
func New(cfg Config) *Agent {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Env) == 0 {
		cfg.Env = DefaultEnv
	}
	if cfg.WorkloadOutput == "" {
		cfg.WorkloadOutput = "/dev/console"
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = 3 * time.Second
	}
	return &Agent{
		cfg:   cfg,
		log:   cfg.Logger,
		procs: newProcTable(cfg.ReapAll),
		link:  agentproto.NewLinkWriter(cfg.Port),
	}
}

// Run serves the port until ctx ends (as PID 1: forever). On return every
// session is closed, every exec and the workload are killed, the port is
// closed and every goroutine of the agent has ended.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if a.procs.reapAll {
		// The reaper outlives everything else: goroutines waiting for a
		// process to exit need it until the very end.
		reapCtx, stopReaper := context.WithCancel(context.Background())
		var reaper sync.WaitGroup
		reaper.Go(func() { a.procs.reapLoop(reapCtx) })
		defer reaper.Wait()
		defer stopReaper()
	}
	stop := context.AfterFunc(ctx, func() { a.cfg.Port.Close() })
	defer stop()

	lr := agentproto.NewLinkReader(a.cfg.Port)
	for ctx.Err() == nil {
		f, err := lr.ReadFrame()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(err, io.EOF) {
				a.endSession(nil, "host disconnected")
			} else {
				a.log.Warn("agent port read failed", "err", err)
				a.endSession(nil, "port read error")
				sleepCtx(ctx, 100*time.Millisecond)
			}
			lr.Reset()
			if err := a.cfg.Port.WaitHost(ctx); err != nil && ctx.Err() == nil {
				a.log.Warn("waiting for host", "err", err)
				sleepCtx(ctx, 100*time.Millisecond)
			}
			continue
		}
		a.dispatch(f)
	}
	a.endSession(nil, "agent stopping")
	a.mu.Lock()
	if w := a.workload; w != nil {
		_ = syscall.Kill(-w.pid, syscall.SIGKILL)
	}
	a.mu.Unlock()
	a.cfg.Port.Close()
	a.wg.Wait()
	return ctx.Err()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (a *Agent) dispatch(f agentproto.Frame) {
	a.mu.Lock()
	cur := a.cur
	a.mu.Unlock()
	switch f.Kind {
	case agentproto.FrameHello:
		a.onHello(f, cur)
	case agentproto.FrameData:
		if cur == nil || cur.epoch != f.Epoch {
			return // a stale session's bytes
		}
		if !cur.conn.Deliver(f.Payload) {
			a.endSession(cur, "session closed")
		}
	case agentproto.FrameBye:
		if cur != nil && cur.epoch == f.Epoch {
			a.endSession(cur, "host said bye")
		}
	}
}

func (a *Agent) onHello(f agentproto.Frame, cur *session) {
	var hh agentproto.HostHello
	if err := json.Unmarshal(f.Payload, &hh); err != nil {
		a.log.Warn("bad hello from host", "err", err)
		return
	}
	if cur != nil && cur.epoch == f.Epoch {
		// The host repeats its Hello until it sees our Welcome.
		a.sendWelcome(f.Epoch, "")
		return
	}
	a.endSession(nil, "new host session")
	if hh.Version != agentproto.Version {
		msg := fmt.Sprintf("host speaks agent protocol v%d, this agent speaks v%d", hh.Version, agentproto.Version)
		a.log.Warn("refusing host session", "reason", msg)
		a.sendWelcome(f.Epoch, msg)
		return
	}
	// Padding, then the Welcome, before any byte of the session: the host
	// may hold the head of a frame our previous session's VMM cut short.
	if err := a.link.WritePadding(); err != nil {
		a.log.Warn("send padding", "err", err)
		return
	}
	if err := a.sendWelcome(f.Epoch, ""); err != nil {
		return
	}
	s, err := newSession(a, f.Epoch)
	if err != nil {
		a.log.Error("start session", "err", err)
		return
	}
	a.mu.Lock()
	a.cur = s
	a.mu.Unlock()
	a.log.Info("host session started", "epoch", fmt.Sprintf("%016x", f.Epoch))
	a.wg.Go(func() { s.serve() })
	a.wg.Go(func() {
		select {
		case <-s.mux.CloseChan():
			a.endSession(s, "multiplexer closed")
		case <-s.closed:
		}
	})
}

func (a *Agent) hello(refusal string) agentproto.Hello {
	a.mu.Lock()
	defer a.mu.Unlock()
	return agentproto.Hello{
		Version:    agentproto.Version,
		BootID:     a.cfg.BootID,
		Configured: a.configured,
		Hostname:   a.cfg.System.Hostname(),
		Kernel:     a.cfg.Kernel,
		Restores:   a.restores,
		Error:      refusal,
		Workload:   a.workloadStatusLocked(),
		Features:   []string{agentproto.FeatureWorkload},
	}
}

func (a *Agent) sendWelcome(epoch uint64, refusal string) error {
	b, err := json.Marshal(a.hello(refusal))
	if err != nil {
		return err
	}
	if err := a.link.WriteFrame(agentproto.Frame{Kind: agentproto.FrameWelcome, Epoch: epoch, Payload: b}); err != nil {
		a.log.Warn("send welcome", "err", err)
		return err
	}
	return nil
}

// endSession ends s (or, with s nil, whatever session is current).
func (a *Agent) endSession(s *session, reason string) {
	a.mu.Lock()
	if s == nil {
		s = a.cur
	}
	if s == nil || a.cur != s {
		a.mu.Unlock()
		return
	}
	a.cur = nil
	a.mu.Unlock()
	killed := s.close()
	a.log.Info("host session ended", "epoch", fmt.Sprintf("%016x", s.epoch), "reason", reason, "execs_killed", killed)
}

// configure applies the once-per-boot configuration: hostname, network,
// root filesystem, then the workload. A workload that cannot start fails
// Configure (with its 127/126 exit code) and leaves the guest unconfigured;
// the network and the root stay set up, and a retry must ask for the same
// root.
func (a *Agent) configure(req *agentproto.ConfigureRequest) error {
	if req == nil {
		return &agentproto.Error{Code: agentproto.CodeInvalidArgument, Message: "configure: empty request"}
	}
	if req.Hostname != "" {
		if err := validHostname(req.Hostname); err != nil {
			return err
		}
	}
	if err := validateConfigure(req); err != nil {
		return err
	}
	if (req.Network != nil || req.Root != nil) && a.cfg.Provisioner == nil {
		return &agentproto.Error{Code: agentproto.CodeNotImplemented, Message: "configure: this agent cannot set up a network or a root filesystem"}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.configured {
		return &agentproto.Error{Code: agentproto.CodeAlreadyConfigured, Message: "already configured in this boot"}
	}
	if req.Root != nil && a.wl.rootReq != "" && a.wl.rootReq != rootKey(req.Root, req.Volumes) {
		return invalid("configure: a previous Configure of this boot assembled another root filesystem")
	}
	if req.Hostname != "" {
		if err := a.cfg.System.SetHostname(req.Hostname); err != nil {
			return &agentproto.Error{Code: agentproto.CodeInternal, Message: fmt.Sprintf("set hostname: %v", err)}
		}
	}
	if req.Network != nil {
		if err := a.cfg.Provisioner.Network(networkDefaults(*req.Network)); err != nil {
			return &agentproto.Error{Code: agentproto.CodeInternal, Message: fmt.Sprintf("configure network: %v", err)}
		}
	}
	if req.Root != nil && a.wl.rootReq == "" {
		t := time.Now()
		root, err := a.cfg.Provisioner.Root(*req.Root, req.Volumes)
		if err != nil {
			return &agentproto.Error{Code: agentproto.CodeInternal, Message: fmt.Sprintf("assemble root filesystem: %v", err)}
		}
		a.wl.root, a.wl.rootReq = root, rootKey(req.Root, req.Volumes)
		a.log.Info("root filesystem assembled", "took", time.Since(t).Round(time.Millisecond), "root", root, "disk", req.Root.Serial, "fstype", req.Root.FSType, "overlay", req.Root.OverlaySerial, "volumes", len(req.Volumes))
	}
	proc := req.Process
	if proc == nil && len(req.Command) > 0 {
		proc = &agentproto.Process{Args: req.Command}
		for _, kv := range mergeEnv(a.cfg.Env, req.Env) {
			proc.Env = append(proc.Env, kv)
		}
	}
	if proc != nil {
		p, err := a.startWorkload(proc, req.Process != nil)
		if err != nil {
			return err
		}
		a.workload = p
		a.wg.Go(func() {
			<-p.done
			code, sig := exitCode(p.ws)
			a.mu.Lock()
			a.wlExit = &agentproto.ExitStatus{Code: code, Signal: sig}
			a.mu.Unlock()
			a.log.Info("workload exited", "code", code, "signal", sig)
		})
	}
	a.configured = true
	return nil
}

// workloadStatusLocked is the workload's status (nil: none). Preconditions:
// a.mu held.
func (a *Agent) workloadStatusLocked() *agentproto.WorkloadStatus {
	if a.workload == nil {
		return nil
	}
	return &agentproto.WorkloadStatus{Pid: a.workload.pid, Exited: a.wlExit}
}

// startWorkload starts the workload in its own session, chrooted in the
// workload root (if any) as its user, with stdin on /dev/null and
// stdout/stderr on WorkloadOutput (the console: the instance's
// console.log). With execDefaults, later execs default to its environment
// and working directory. Preconditions: a.mu held.
func (a *Agent) startWorkload(p *agentproto.Process, execDefaults bool) (*proc, error) {
	root := a.wl.root
	u, err := a.lookupUser(root, p.User)
	if err != nil {
		return nil, invalid("start workload %q: %v", p.Args[0], err)
	}
	env := workloadEnv(p.Env, u.home)
	cwd := p.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	if root != "" {
		// Like docker, a working dir the image lacks is created.
		if err := os.MkdirAll(root+cwd, 0o755); err != nil {
			return nil, invalid("start workload %q: working dir %s: %v", p.Args[0], cwd, err)
		}
	}
	path, err := lookPathIn(root, p.Args[0], env)
	if err != nil {
		return nil, startError(p.Args[0], err)
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer null.Close()
	out, err := os.OpenFile(a.cfg.WorkloadOutput, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, fmt.Errorf("open workload output: %w", err)
	}
	defer out.Close()
	sys := &syscall.SysProcAttr{Setsid: true, Chroot: root}
	if root != "" || p.User != "" {
		sys.Credential = &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: u.groups}
	}
	pr, err := a.procs.start(path, p.Args, &syscall.ProcAttr{
		Dir:   cwd,
		Env:   env,
		Files: []uintptr{null.Fd(), out.Fd(), out.Fd()},
		Sys:   sys,
	})
	if err != nil {
		return nil, startError(p.Args[0], fmt.Errorf("exec %s: %w", path, err))
	}
	if execDefaults {
		// Execs inherit the image's environment and working dir (docker
		// exec's rule); the initramfs workload keeps today's defaults.
		a.wl.env, a.wl.cwd = env, cwd
	}
	a.log.Info("workload started", "pid", pr.pid, "command", p.Args, "root", root, "uid", u.uid, "gid", u.gid)
	return pr, nil
}

// lookupUser resolves spec in root's /etc/passwd and /etc/group.
func (a *Agent) lookupUser(root, spec string) (user, error) {
	var pw, gr io.Reader
	if f, err := openInRoot(root, "/etc/passwd"); err == nil {
		defer f.Close()
		pw = f
	}
	if f, err := openInRoot(root, "/etc/group"); err == nil {
		defer f.Close()
		gr = f
	}
	return resolveUser(spec, pw, gr)
}

// restored applies what the host sends after a restore. It validates
// everything before changing anything.
func (a *Agent) restored(req *agentproto.RestoredRequest) (*agentproto.RestoredResult, error) {
	if req == nil {
		return nil, &agentproto.Error{Code: agentproto.CodeInvalidArgument, Message: "restored: empty request"}
	}
	if req.Hostname != "" {
		if err := validHostname(req.Hostname); err != nil {
			return nil, err
		}
	}
	if err := applyNetworkIdentity(req.Network); err != nil {
		return nil, err
	}
	res := &agentproto.RestoredResult{}
	sys := a.cfg.System
	if req.UnixNano != 0 {
		step, err := sys.StepClock(time.Unix(0, req.UnixNano))
		if err != nil {
			return nil, &agentproto.Error{Code: agentproto.CodeInternal, Message: fmt.Sprintf("step clock: %v", err)}
		}
		res.ClockStepNanos = int64(step)
	}
	if len(req.Entropy) > 0 {
		bits, err := sys.AddEntropy(req.Entropy)
		if err != nil {
			return nil, &agentproto.Error{Code: agentproto.CodeInternal, Message: fmt.Sprintf("add entropy: %v", err)}
		}
		res.EntropyCredited = bits
		if err := sys.ReseedRNG(); err != nil {
			return nil, &agentproto.Error{Code: agentproto.CodeInternal, Message: fmt.Sprintf("reseed crng: %v", err)}
		}
		res.Reseeded = true
	}
	if req.Hostname != "" {
		if err := sys.SetHostname(req.Hostname); err != nil {
			return nil, &agentproto.Error{Code: agentproto.CodeInternal, Message: fmt.Sprintf("set hostname: %v", err)}
		}
	}
	res.EntropyAvail = sys.EntropyAvail()
	res.Hostname = sys.Hostname()
	a.mu.Lock()
	a.restores++
	a.mu.Unlock()
	a.log.Info("restore applied", "clock_step", time.Duration(res.ClockStepNanos), "entropy_bits", res.EntropyCredited, "hostname", res.Hostname)
	return res, nil
}

// applyNetworkIdentity is the hook for a fork's network identity (wave 2:
// MAC, addresses, routes, DNS, then gratuitous ARP). Until it exists the
// agent refuses a Restored that carries one, before changing anything, so
// a host that relies on it learns at once.
func applyNetworkIdentity(id *agentproto.NetworkIdentity) error {
	if id == nil {
		return nil
	}
	return &agentproto.Error{Code: agentproto.CodeNotImplemented, Message: "network identity is not supported by this agent yet"}
}

// powerOff stops every process and turns the machine off. It runs once.
func (a *Agent) powerOff() {
	a.mu.Lock()
	if a.shutdown {
		a.mu.Unlock()
		return
	}
	a.shutdown = true
	a.mu.Unlock()
	sys := a.cfg.System
	a.log.Info("shutting down")
	sys.Sync()
	if err := sys.KillAll(syscall.SIGTERM); err != nil {
		a.log.Warn("SIGTERM all", "err", err)
	}
	if !a.procs.waitAll(a.cfg.ShutdownGrace) {
		a.log.Info("processes still running after grace; SIGKILL", "grace", a.cfg.ShutdownGrace)
		_ = sys.KillAll(syscall.SIGKILL)
		a.procs.waitAll(time.Second)
	}
	sys.Sync()
	if err := sys.PowerOff(); err != nil {
		a.log.Error("power off", "err", err)
	}
}

func validHostname(h string) error {
	bad := len(h) == 0 || len(h) > 64 || h[0] == '-' || h[0] == '.'
	for i := 0; i < len(h) && !bad; i++ {
		c := h[i]
		bad = !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.')
	}
	if bad {
		return &agentproto.Error{Code: agentproto.CodeInvalidArgument, Message: fmt.Sprintf("invalid hostname %q: want 1-64 of [A-Za-z0-9.-], not starting with - or .", h)}
	}
	return nil
}

// mergeEnv returns base with extra's keys added or replaced.
func mergeEnv(base []string, extra map[string]string) []string {
	out := make([]string, 0, len(base)+len(extra))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := extra[k]; !ok {
			out = append(out, kv)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(extra)) {
		out = append(out, k+"="+extra[k])
	}
	return out
}
