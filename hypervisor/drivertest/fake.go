// Package drivertest holds the conformance suite every hypervisor driver
// passes (suite.go) and Fake, a driver double that runs no VM at all.
//
// Fake is a test double, named as such: it exists so the manager's state
// machine, crash handling and the randomized lifecycle model can run
// thousands of steps without booting VMs. It keeps the one property those
// tests rely on, the same as QEMU's: the guest's RAM is the instance
// directory's memory file, written in place (GuestWrite), and a standby
// image is that file plus a state file.
package drivertest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor"
)

// Files the fake keeps in an instance directory, named like QEMU's.
const (
	MemoryFile = "memory"
	StateFile  = "state"
	kernelFile = "kernel"
	initrdFile = "initramfs"
)

var fakeMagic = []byte("FAKEVMSTATE1\n")

// Fake is a hypervisor.Driver double. Its VMs are registry entries, not
// processes; "VMM identities" are unique fake pids that live as long as the
// Fake does, so a second manager on the same Fake adopts them like a
// restarted daemon adopts real VMMs.
type Fake struct {
	mu      sync.Mutex
	vms     map[int]*FakeVM // by fake pid, live VMs only
	nextPID atomic.Int64
	// FailNext makes the next call of the named method ("Boot", "Restore",
	// "SaveState", "Pause") fail once, for error-path tests.
	failNext map[string]error
	// sharedWrites counts in-place writes into a memory file with more
	// than one link (SharedWrites): what must never happen.
	sharedWrites atomic.Int64
}

// NewFake returns an empty fake driver.
func NewFake() *Fake {
	f := &Fake{vms: map[int]*FakeVM{}, failNext: map[string]error{}}
	f.nextPID.Store(1 << 22) // above any real pid_max default
	return f
}

var _ hypervisor.Driver = (*Fake)(nil)

func (f *Fake) Name() string { return "qemu" }

// FailNext arms a one-shot failure of method.
func (f *Fake) FailNext(method string, err error) {
	f.mu.Lock()
	f.failNext[method] = err
	f.mu.Unlock()
}

func (f *Fake) takeFailure(method string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.failNext[method]
	delete(f.failNext, method)
	return err
}

// Live returns the fake VMs currently "running".
func (f *Fake) Live() []*FakeVM {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*FakeVM, 0, len(f.vms))
	for _, v := range f.vms {
		out = append(out, v)
	}
	return out
}

// launch opens the guest RAM: the memory file itself (written in place),
// or, shared, a read-only view of it plus a private copy of each page
// the guest writes (fake_sharing.go).
func (f *Fake) launch(spec hypervisor.Spec, shared bool) (*FakeVM, error) {
	path := filepath.Join(spec.Dir, MemoryFile)
	var mem *os.File
	var err error
	if shared {
		mem, err = os.Open(path)
	} else {
		if err := checkOwnMemory(spec.Dir); err != nil {
			return nil, err
		}
		if mem, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600); err == nil {
			if err = mem.Truncate(spec.MemoryBytes); err != nil {
				mem.Close()
			}
		}
	}
	if err != nil {
		return nil, err
	}
	v := &FakeVM{f: f, spec: spec, mem: mem, exited: make(chan struct{}), shared: shared, overlay: map[int64][]byte{},
		proc: hypervisor.Process{PID: int(f.nextPID.Add(1)), StartTime: 1}}
	f.mu.Lock()
	f.vms[v.proc.PID] = v
	f.mu.Unlock()
	return v, nil
}

func (f *Fake) Boot(ctx context.Context, spec hypervisor.Spec, assets hypervisor.BootAssets) (hypervisor.VM, json.RawMessage, error) {
	if err := f.takeFailure("Boot"); err != nil {
		return nil, nil, err
	}
	if spec.VCPUs < 1 || spec.MemoryBytes < 1<<20 {
		return nil, nil, fmt.Errorf("fake: bad spec: %w", errdefs.ErrInvalidArgument)
	}
	if err := hypervisor.CheckDevices(spec); err != nil {
		return nil, nil, fmt.Errorf("fake boot %s: %w", spec.ID, err)
	}
	for _, name := range []string{kernelFile, initrdFile} {
		if err := os.WriteFile(filepath.Join(spec.Dir, name), []byte("fake "+name), 0o644); err != nil {
			return nil, nil, err
		}
	}
	if err := f.DiscardSavedState(spec.Dir); err != nil {
		return nil, nil, err
	}
	v, err := f.launch(spec, false)
	if err != nil {
		return nil, nil, err
	}
	return v, json.RawMessage(`{"fake":true}`), nil
}

func (f *Fake) Restore(ctx context.Context, spec hypervisor.Spec) (hypervisor.VM, error) {
	if err := f.takeFailure("Restore"); err != nil {
		return nil, err
	}
	if err := hypervisor.CheckDevices(spec); err != nil {
		return nil, fmt.Errorf("fake restore %s: %w", spec.ID, err)
	}
	statePath := filepath.Join(spec.Dir, StateFile)
	raw, err := os.ReadFile(statePath)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("fake restore: saved state file %s is missing: %w", statePath, errdefs.ErrInvalidState)
	case err != nil:
		return nil, err
	case !bytes.HasPrefix(raw, fakeMagic):
		return nil, fmt.Errorf("fake restore: saved state file %s is corrupt: %w", statePath, errdefs.ErrInvalidState)
	}
	// The state file records the memory hash at save time: restoring onto
	// different memory is exactly the corruption zygote must never cause.
	want, devices, _ := strings.Cut(string(bytes.TrimPrefix(raw, fakeMagic)), "\n")
	devices, deltaRaw, _ := strings.Cut(devices, deltaMarker)
	delta, err := decodeDelta([]byte(deltaRaw))
	if err != nil {
		return nil, fmt.Errorf("fake restore: saved state file %s is corrupt: %w", statePath, errdefs.ErrInvalidState)
	}
	// QEMU loads a state only into the same device set; so does the fake.
	if devices != hypervisor.DeviceSignature(spec) {
		return nil, fmt.Errorf("fake restore %s: the saved state has devices %q, the spec %q: %w", spec.ID, devices, hypervisor.DeviceSignature(spec), errdefs.ErrInvalidState)
	}
	got, err := hashFile(filepath.Join(spec.Dir, MemoryFile))
	if err != nil {
		return nil, fmt.Errorf("fake restore: %w", err)
	}
	if got != want {
		return nil, fmt.Errorf("fake restore %s: memory file does not match the saved state (hash %s, state says %s)", spec.ID, got, want)
	}
	v, err := f.launch(spec, spec.SharedMemory)
	if err != nil {
		return nil, err
	}
	if err := v.loadDelta(delta); err != nil {
		v.kill()
		return nil, fmt.Errorf("fake restore: %w", err)
	}
	if err := os.Remove(statePath); err != nil {
		v.kill()
		return nil, err
	}
	return v, nil
}

func (f *Fake) Attach(ctx context.Context, spec hypervisor.Spec, p hypervisor.Process) (hypervisor.VM, error) {
	f.mu.Lock()
	v, ok := f.vms[p.PID]
	if !ok || v.spec.Dir != spec.Dir || v.proc != p {
		f.mu.Unlock()
		return nil, fmt.Errorf("fake attach %s: %w", spec.ID, errdefs.ErrNotFound)
	}
	f.mu.Unlock()
	// Like QEMU, which cannot read its devices back: the VM has the
	// devices its caller describes, and a later SaveState records them.
	// (v.mu after f.mu is released: kill takes them the other way round.)
	v.mu.Lock()
	v.spec.Disks, v.spec.NIC = spec.Disks, spec.NIC
	v.mu.Unlock()
	return v, nil
}

func (f *Fake) Find(spec hypervisor.Spec) ([]hypervisor.Process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []hypervisor.Process
	for _, v := range f.vms {
		if v.spec.Dir == spec.Dir {
			out = append(out, v.proc)
		}
	}
	return out, nil
}

// AcceleratorOf reports "fake" for the driver state the fake's Boot
// returns, and nothing for any other.
func (f *Fake) AcceleratorOf(driverState []byte) string {
	var st struct{ Fake bool }
	if json.Unmarshal(driverState, &st) != nil || !st.Fake {
		return ""
	}
	return "fake"
}

// MemoryFile is the fake guest's RAM file.
func (f *Fake) MemoryFile(dir string) string { return filepath.Join(dir, MemoryFile) }

func (f *Fake) HasSavedState(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, StateFile))
	return err == nil
}

func (f *Fake) DiscardSavedState(dir string) error {
	for _, name := range []string{StateFile, MemoryFile} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// FakeVM is a running fake VM.
type FakeVM struct {
	f      *Fake
	spec   hypervisor.Spec
	proc   hypervisor.Process
	exited chan struct{}

	mu     sync.Mutex
	mem    *os.File // nil once exited
	paused bool
	// shared: mem is a read-only view of a (maybe shared) memory file;
	// overlay holds the pages the guest wrote (4 KiB, by offset).
	shared  bool
	overlay map[int64][]byte
}

var _ hypervisor.VM = (*FakeVM)(nil)

func (v *FakeVM) Process() hypervisor.Process { return v.proc }
func (v *FakeVM) Exited() <-chan struct{}     { return v.exited }

// Spec is the spec the VM was launched with, its devices as the last
// Attach described them.
func (v *FakeVM) Spec() hypervisor.Spec {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.spec
}

func (v *FakeVM) live() error {
	if v.mem == nil {
		return fmt.Errorf("fake VM %s has exited: %w", v.spec.ID, errdefs.ErrUnavailable)
	}
	return nil
}

func (v *FakeVM) Pause(ctx context.Context) error {
	if err := v.f.takeFailure("Pause"); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.live(); err != nil {
		return err
	}
	v.paused = true
	return nil
}

func (v *FakeVM) Resume(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.live(); err != nil {
		return err
	}
	v.paused = false
	return nil
}

func (v *FakeVM) Paused(ctx context.Context) (bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.paused, v.live()
}

// GuestWrite writes into guest RAM, in place, as a running guest would. It
// fails on a paused or exited VM.
func (v *FakeVM) GuestWrite(off int64, data []byte) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.live(); err != nil {
		return err
	}
	if v.paused {
		return fmt.Errorf("fake VM %s is paused: %w", v.spec.ID, errdefs.ErrInvalidState)
	}
	if v.shared {
		return v.writePrivate(off, data)
	}
	if err := v.auditInPlace(); err != nil {
		return err
	}
	_, err := v.mem.WriteAt(data, off)
	return err
}

// GuestRead reads guest RAM.
func (v *FakeVM) GuestRead(off int64, n int) ([]byte, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.live(); err != nil {
		return nil, err
	}
	if v.shared {
		return v.readPrivate(off, n)
	}
	buf := make([]byte, n)
	_, err := v.mem.ReadAt(buf, off)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return buf, err
}

func (v *FakeVM) SaveState(ctx context.Context) (hypervisor.SaveStats, error) {
	if err := v.f.takeFailure("SaveState"); err != nil {
		return hypervisor.SaveStats{}, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.live(); err != nil {
		return hypervisor.SaveStats{}, err
	}
	if !v.paused {
		return hypervisor.SaveStats{}, fmt.Errorf("fake: save state of a running VM: %w", errdefs.ErrInvalidState)
	}
	if !v.shared {
		if err := v.mem.Sync(); err != nil {
			return hypervisor.SaveStats{}, err
		}
	}
	sum, err := hashFile(v.mem.Name())
	if err != nil {
		return hypervisor.SaveStats{}, err
	}
	content := append(append([]byte{}, fakeMagic...), sum+"\n"+hypervisor.DeviceSignature(v.spec)...)
	if v.shared {
		// Like QEMU on a private map: the guest's own pages go in the state.
		content = append(append(content, deltaMarker...), encodeDelta(v.overlay)...)
	}
	tmp := filepath.Join(v.spec.Dir, StateFile+".tmp")
	if err := os.WriteFile(tmp, content, 0o600); err != nil {
		return hypervisor.SaveStats{}, err
	}
	if err := os.Rename(tmp, filepath.Join(v.spec.Dir, StateFile)); err != nil {
		return hypervisor.SaveStats{}, err
	}
	return hypervisor.SaveStats{StateBytes: int64(len(content))}, nil
}

func (v *FakeVM) DialAgent(ctx context.Context) (net.Conn, error) {
	return nil, fmt.Errorf("fake VM has no agent channel; use the fake agent: %w", errdefs.ErrNotImplemented)
}

func (v *FakeVM) Quit(ctx context.Context) error {
	v.kill()
	return nil
}

// Crash ends the VM as if the VMM died (an unexpected exit).
func (v *FakeVM) Crash() { v.kill() }

func (v *FakeVM) kill() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.mem == nil {
		return
	}
	v.mem.Close()
	v.mem = nil
	v.f.mu.Lock()
	delete(v.f.vms, v.proc.PID)
	v.f.mu.Unlock()
	close(v.exited)
}

func (v *FakeVM) Close() error { return nil }

// hashFile hashes a file's content: its size and every non-zero 4 KiB
// page with its offset. Holes and zero-filled blocks hash alike (content,
// not layout), and the mostly sparse memory files of fake VMs hash fast
// (SEEK_DATA/SEEK_HOLE skip the holes).
func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "size %d\n", fi.Size())
	const page = 4096
	buf := make([]byte, 64*page)
	zero := make([]byte, page)
	for off := int64(0); off < fi.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: only a hole remains
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return "", err
		}
		for pos := data &^ (page - 1); pos < hole; pos += int64(len(buf)) {
			n, err := f.ReadAt(buf, pos)
			if err != nil && !errors.Is(err, io.EOF) {
				return "", err
			}
			for i := 0; i+page <= n || (i < n && n < page); i += page {
				p := buf[i:min(i+page, n)]
				if !bytes.Equal(p, zero[:len(p)]) {
					fmt.Fprintf(h, "page %d\n", pos+int64(i))
					h.Write(p)
				}
			}
		}
		off = hole
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}
