package initdtest

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zygote/zygote/guest/initd"
)

// SocketPort is a test double of a guest virtio-serial port served to the
// host as a unix socket. It implements initd.Port with the port's
// semantics: Read returns io.EOF while no host is connected (unless
// HideDisconnects), Write blocks until a host is connected, WaitHost waits
// for one. Hosts are accepted one at a time; the next waits in the
// listen backlog, as with QEMU.
type SocketPort struct {
	// HideDisconnects makes a host disconnect invisible to Read, which
	// then continues with the next host's bytes: what a guest restored
	// from a snapshot sees when QEMU does not report the host change.
	HideDisconnects bool

	path string
	ln   *net.UnixListener

	mu      sync.Mutex
	changed chan struct{} // closed and replaced whenever conn or closed changes
	conn    net.Conn
	closed  bool
	wg      sync.WaitGroup
}

// NewSocketPort listens on path.
func NewSocketPort(path string) (*SocketPort, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	p := &SocketPort{path: path, ln: ln, changed: make(chan struct{})}
	p.wg.Go(p.acceptLoop)
	return p, nil
}

// Path is the socket path hosts connect to.
func (p *SocketPort) Path() string { return p.path }

func (p *SocketPort) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *SocketPort) acceptLoop() {
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			conn.Close()
			return
		}
		p.conn = conn
		p.notifyLocked()
		// One host at a time: wait until this one is gone.
		for p.conn == conn && !p.closed {
			ch := p.changed
			p.mu.Unlock()
			<-ch
			p.mu.Lock()
		}
		p.mu.Unlock()
	}
}

// current returns the connected host, waiting for one if wait is set.
func (p *SocketPort) current(wait bool) (net.Conn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if p.closed {
			return nil, net.ErrClosed
		}
		if p.conn != nil || !wait {
			return p.conn, nil
		}
		ch := p.changed
		p.mu.Unlock()
		<-ch
		p.mu.Lock()
	}
}

// drop forgets conn after it failed.
func (p *SocketPort) drop(conn net.Conn) {
	conn.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn == conn {
		p.conn = nil
		p.notifyLocked()
	}
}

// Disconnect drops the current host, as QEMU does when its client goes.
func (p *SocketPort) Disconnect() {
	if c, _ := p.current(false); c != nil {
		p.drop(c)
	}
}

func (p *SocketPort) Read(b []byte) (int, error) {
	for {
		conn, err := p.current(p.HideDisconnects)
		if err != nil {
			return 0, err
		}
		if conn == nil {
			return 0, io.EOF
		}
		n, err := conn.Read(b)
		if n > 0 {
			return n, nil
		}
		p.drop(conn)
		if !p.HideDisconnects {
			return 0, io.EOF
		}
	}
}

// Write blocks until a host is connected. If the host goes away in the
// middle, the rest of b is lost, as with QEMU.
func (p *SocketPort) Write(b []byte) (int, error) {
	conn, err := p.current(true)
	if err != nil {
		return 0, err
	}
	if _, err := conn.Write(b); err != nil {
		p.drop(conn)
	}
	return len(b), nil
}

func (p *SocketPort) WaitHost(ctx context.Context) error {
	for {
		p.mu.Lock()
		ok, closed, ch := p.conn != nil, p.closed, p.changed
		p.mu.Unlock()
		if closed {
			return net.ErrClosed
		}
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (p *SocketPort) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	if p.conn != nil {
		p.conn.Close()
	}
	p.notifyLocked()
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
	return nil
}

// FakeSystem is an initd.System that records calls and changes nothing.
type FakeSystem struct {
	mu         sync.Mutex
	hostname   string
	clockSteps []time.Time
	entropy    [][]byte
	reseeds    int
	kills      []syscall.Signal
	poweredOff chan struct{}
}

// NewFakeSystem returns a FakeSystem with hostname "(none)".
func NewFakeSystem() *FakeSystem {
	return &FakeSystem{hostname: "(none)", poweredOff: make(chan struct{})}
}

var _ initd.System = (*FakeSystem)(nil)

func (s *FakeSystem) Hostname() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hostname
}

func (s *FakeSystem) SetHostname(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hostname = name
	return nil
}

func (s *FakeSystem) StepClock(to time.Time) (time.Duration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clockSteps = append(s.clockSteps, to)
	return time.Until(to), nil
}

func (s *FakeSystem) AddEntropy(seed []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entropy = append(s.entropy, append([]byte(nil), seed...))
	return 8 * len(seed), nil
}

func (s *FakeSystem) ReseedRNG() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reseeds++
	return nil
}

func (s *FakeSystem) EntropyAvail() int { return 256 }
func (s *FakeSystem) Sync()             {}

func (s *FakeSystem) KillAll(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kills = append(s.kills, sig)
	return nil
}

func (s *FakeSystem) PowerOff() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.poweredOff:
		return errors.New("powered off twice")
	default:
		close(s.poweredOff)
	}
	return nil
}

// PoweredOff is closed once PowerOff was called.
func (s *FakeSystem) PoweredOff() <-chan struct{} { return s.poweredOff }

// Record is a copy of what the agent did.
type Record struct {
	ClockSteps []time.Time
	Entropy    [][]byte
	Reseeds    int
	Kills      []syscall.Signal
}

// Record returns what the agent did so far.
func (s *FakeSystem) Record() Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Record{
		ClockSteps: append([]time.Time(nil), s.clockSteps...),
		Entropy:    append([][]byte(nil), s.entropy...),
		Reseeds:    s.reseeds,
		Kills:      append([]syscall.Signal(nil), s.kills...),
	}
}

// Agent is an agent running in the test process.
type Agent struct {
	// Socket is where a host client dials.
	Socket string
	Port   *SocketPort
	System *FakeSystem
	// WorkloadLog is the file the workload's output goes to.
	WorkloadLog string
}

// Options tune Start.
type Options struct {
	HideDisconnects bool
	BootID          string
}

// Start runs an agent on a new SocketPort until the test ends.
func Start(t testing.TB, opts Options) *Agent {
	t.Helper()
	// Unix socket paths are limited to 108 bytes: t.TempDir may be longer.
	dir, err := os.MkdirTemp("", "initdtest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	port, err := NewSocketPort(filepath.Join(dir, "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	port.HideDisconnects = opts.HideDisconnects
	return Serve(t, port, opts)
}

// Serve runs an agent on port until the test ends; it closes the port then.
func Serve(t testing.TB, port *SocketPort, opts Options) *Agent {
	t.Helper()
	if opts.BootID == "" {
		opts.BootID = "test-boot"
	}
	log, err := os.CreateTemp("", "initdtest-workload")
	if err != nil {
		t.Fatal(err)
	}
	log.Close()
	t.Cleanup(func() { os.Remove(log.Name()) })
	a := &Agent{Socket: port.Path(), Port: port, System: NewFakeSystem(), WorkloadLog: log.Name()}
	agent := initd.New(initd.Config{
		Port:           port,
		System:         a.System,
		BootID:         opts.BootID,
		Kernel:         "test",
		WorkloadOutput: a.WorkloadLog,
		ShutdownGrace:  200 * time.Millisecond,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		agent.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return a
}
