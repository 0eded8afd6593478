package instancestest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/guest/agentproto"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/hypervisor/drivertest"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/internal/ids"
)

// GuestStateSize is the head of a fake guest's RAM that holds the fake
// agent's own state (boot id, configured, hostname, restores), so that
// state travels with the memory file through standby, restore and forks
// exactly as a real guest's does. Tests write guest data above it.
const GuestStateSize = 4096

type guestState struct {
	BootID     string `json:"boot_id"`
	Configured bool   `json:"configured"`
	Hostname   string `json:"hostname"`
	Restores   int    `json:"restores"`
	Workload   string `json:"workload,omitempty"`
	// Address is the NIC address Configure gave the guest.
	Address string `json:"address,omitempty"`
}

// FakeAgent is a guest agent double for drivertest.Fake VMs: a test
// double, not an agent. Its Exec understands a few commands: echo, true,
// false, exit N, cat, hostname, bootid, ipaddr (the NIC address Configure set), write OFFSET TEXT (into guest RAM),
// read OFFSET N, tty-echo (prints the TTY size and each resize, echoes
// stdin, and exits at a 'q' or at stdin's end). Its file operations work on FakeGuestRoot.
type FakeAgent struct {
	vm   *drivertest.FakeVM
	mu   sync.Mutex
	done chan struct{}
	hi   agent.Hello
}

// DialFakeAgent is an instances.AgentDialer for drivertest.Fake.
func DialFakeAgent(ctx context.Context, vm hypervisor.VM) (instances.Agent, error) {
	fv, ok := vm.(*drivertest.FakeVM)
	if !ok {
		return nil, fmt.Errorf("fake agent: %T is not a fake VM", vm)
	}
	a := &FakeAgent{vm: fv, done: make(chan struct{})}
	st, err := a.load()
	if err != nil {
		return nil, err
	}
	if st.BootID == "" { // a fresh boot: zeroed RAM
		st.BootID = ids.New()
		if err := a.store(st); err != nil {
			return nil, err
		}
	}
	a.hi = agent.Hello{Version: 1, BootID: st.BootID, Configured: st.Configured, Hostname: st.Hostname, Restores: st.Restores}
	go func() { // owner: the agent; ends with the VM or Close
		select {
		case <-fv.Exited():
			a.Close()
		case <-a.done:
		}
	}()
	return a, nil
}

func (a *FakeAgent) load() (guestState, error) {
	var st guestState
	raw, err := a.vm.GuestRead(0, GuestStateSize)
	if err != nil {
		return st, err
	}
	raw = []byte(strings.TrimRight(string(raw), "\x00"))
	if len(raw) == 0 {
		return st, nil
	}
	return st, json.Unmarshal(raw, &st)
}

func (a *FakeAgent) store(st guestState) error {
	raw, _ := json.Marshal(st)
	buf := make([]byte, GuestStateSize)
	copy(buf, raw)
	return a.vm.GuestWrite(0, buf)
}

func (a *FakeAgent) alive() error {
	select {
	case <-a.done:
		return agent.ErrConnectionLost
	default:
		return nil
	}
}

func (a *FakeAgent) Hello() agent.Hello { return a.hi }

func (a *FakeAgent) Configure(ctx context.Context, cfg agent.Config) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.alive(); err != nil {
		return err
	}
	st, err := a.load()
	if err != nil {
		return err
	}
	if st.Configured {
		return agent.ErrAlreadyConfigured
	}
	st.Configured, st.Hostname, st.Workload = true, cfg.Hostname, strings.Join(cfg.Command, " ")
	if cfg.Network != nil {
		st.Address = cfg.Network.Address
	}
	if p := cfg.Process; p != nil {
		// An image's program: "missing" cannot start (127, as a real
		// agent answers); "exit N" exits with N at once; anything else
		// runs until the VM stops.
		if len(p.Args) > 0 && p.Args[0] == "missing" {
			return &agent.RemoteError{Code: agentproto.CodeInvalidArgument, Message: "start missing: no such file", ExitCode: 127}
		}
		st.Workload = strings.Join(p.Args, " ")
	}
	return a.store(st)
}

// WaitWorkload reports the image program's exit: "exit N" exits with N;
// any other program never exits (the call ends with ctx or the agent).
func (a *FakeAgent) WaitWorkload(ctx context.Context) (agentproto.ExitStatus, error) {
	a.mu.Lock()
	st, err := a.load()
	a.mu.Unlock()
	if err != nil {
		return agentproto.ExitStatus{}, err
	}
	if code, ok := strings.CutPrefix(st.Workload, "exit "); ok {
		n, err := strconv.Atoi(code)
		if err == nil {
			return agentproto.ExitStatus{Code: n}, nil
		}
	}
	select {
	case <-ctx.Done():
		return agentproto.ExitStatus{}, ctx.Err()
	case <-a.done:
		return agentproto.ExitStatus{}, agent.ErrConnectionLost
	}
}

func (a *FakeAgent) Restored(ctx context.Context, info agent.RestoreInfo) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.alive(); err != nil {
		return err
	}
	st, err := a.load()
	if err != nil {
		return err
	}
	st.Restores++
	if info.Hostname != "" {
		st.Hostname = info.Hostname
	}
	return a.store(st)
}

func (a *FakeAgent) Exec(ctx context.Context, req agent.ExecRequest) (int, error) {
	if err := a.alive(); err != nil {
		return -1, err
	}
	out, errw := orDiscard(req.Stdout), orDiscard(req.Stderr)
	if len(req.Command) == 0 {
		return 127, nil
	}
	args := req.Command[1:]
	switch req.Command[0] {
	case "echo":
		fmt.Fprintln(out, strings.Join(args, " "))
	case "true":
	case "false":
		return 1, nil
	case "exit":
		if len(args) != 1 {
			return 2, nil
		}
		n, _ := strconv.Atoi(args[0])
		return n, nil
	case "cat":
		if req.Stdin != nil {
			io.Copy(out, req.Stdin)
		}
	case "tty-echo":
		// Prints the terminal size and each resize, echoes stdin, and
		// exits at a 'q' or at stdin's end.
		if !req.TTY {
			fmt.Fprintln(errw, "not a tty")
			return 1, nil
		}
		fmt.Fprintf(out, "%d %d\r\n", req.Rows, req.Cols)
		in := make(chan []byte)
		quit := make(chan struct{})
		defer close(quit)
		go func() { // owner: this exec; ends at stdin's end or when it returns
			defer close(in)
			if req.Stdin == nil {
				return
			}
			for {
				buf := make([]byte, 256)
				n, err := req.Stdin.Read(buf)
				if n > 0 {
					select {
					case in <- buf[:n]:
					case <-quit:
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		for {
			select {
			case ws := <-req.Resize:
				fmt.Fprintf(out, "%d %d\r\n", ws.Rows, ws.Cols)
			case b, ok := <-in:
				if !ok {
					return 0, nil
				}
				out.Write(b)
				if bytes.IndexByte(b, 'q') >= 0 {
					return 0, nil
				}
			case <-ctx.Done():
				return -1, ctx.Err()
			}
		}
	case "ipaddr":
		a.mu.Lock()
		st, err := a.load()
		a.mu.Unlock()
		if err != nil {
			return -1, err
		}
		fmt.Fprintln(out, st.Address)
	case "hostname", "bootid":
		a.mu.Lock()
		st, err := a.load()
		a.mu.Unlock()
		if err != nil {
			return -1, err
		}
		if req.Command[0] == "hostname" {
			fmt.Fprintln(out, st.Hostname)
		} else {
			fmt.Fprintln(out, st.BootID)
		}
	case "write":
		off, err := strconv.ParseInt(args[0], 10, 64)
		if len(args) != 2 || err != nil || off < GuestStateSize {
			fmt.Fprintln(errw, "usage: write OFFSET(≥4096) TEXT")
			return 2, nil
		}
		if err := a.vm.GuestWrite(off, []byte(args[1])); err != nil {
			return -1, err
		}
	case "read":
		off, err1 := strconv.ParseInt(args[0], 10, 64)
		n, err2 := strconv.Atoi(args[1])
		if len(args) != 2 || err1 != nil || err2 != nil {
			fmt.Fprintln(errw, "usage: read OFFSET N")
			return 2, nil
		}
		data, err := a.vm.GuestRead(off, n)
		if err != nil {
			return -1, err
		}
		w := bufio.NewWriter(out)
		w.Write(data)
		w.Flush()
	default:
		fmt.Fprintf(errw, "fake agent: unknown command %q\n", req.Command[0])
		return 127, nil
	}
	return 0, nil
}

func (a *FakeAgent) Shutdown(ctx context.Context) error {
	if err := a.alive(); err != nil {
		return err
	}
	a.vm.Crash() // a guest poweroff ends the VMM
	return nil
}

func (a *FakeAgent) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	select {
	case <-a.done:
	default:
		close(a.done)
	}
	return nil
}

func (a *FakeAgent) Done() <-chan struct{} { return a.done }

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
