package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/internal/logfile"
	"github.com/zygote/zygote/internal/proc"
)

// Config configures the QEMU driver.
type Config struct {
	// Binary is the QEMU executable (default qemu-system-x86_64).
	Binary string
	// Machine is "q35" (default) or "microvm".
	Machine string
	// Accel is "auto" (default: KVM when a guest really boots under it,
	// else TCG), "kvm" or "tcg".
	Accel string
	// ProbeCacheDir caches the KVM probe's verdict per host boot.
	ProbeCacheDir string
	// ShareFile gives an instance directory its own link to an immutable
	// boot asset: a hard link where it can (DESIGN invariant 1), else a
	// reflink or a copy. dst does not exist.
	ShareFile func(ctx context.Context, src, dst string) error
	// Unconfined runs QEMU without its -sandbox seccomp filter and with
	// the daemon's capabilities (debugging only; see confine.go).
	Unconfined bool
	// HostHugePages lets QEMU back guest RAM with 2 MiB page-cache folios
	// (its madvise(MADV_HUGEPAGE)): fewer TLB misses under KVM, but a 4 KiB
	// guest write then dirties 2 MiB of the memory file, and a re-standby
	// writes all of it. Off by default.
	HostHugePages bool
	// CopyMemory copies a memory file into a new file of the same
	// directory, reflink-first (sharing.go: an owner breaking the link of a
	// shared memory file). Never a hard link. nil: clone.File with the
	// clone package's default options (the daemon passes its Cloner's File,
	// so strict mode applies).
	CopyMemory func(ctx context.Context, src, dst string) error
	// LogLimits caps console.log and vmm.log (zero fields: 10 MiB × 2
	// files each).
	LogLimits logfile.Limits
	Logger    *slog.Logger
}

// Driver runs VMs with QEMU. It is safe for concurrent use.
type Driver struct {
	cfg     Config
	log     *slog.Logger
	version string
	sandbox bool // QEMU supports -sandbox and Config.Unconfined is off
	// keepPageCache skips the eviction after a standby (benchmarks only).
	keepPageCache bool

	accelMu sync.Mutex // guards accel
	accel   string     // resolved "auto", once probed
}

var _ hypervisor.Driver = (*Driver)(nil)

// New checks that QEMU is installed and returns a driver.
func New(cfg Config) (*Driver, error) {
	if cfg.Binary == "" {
		cfg.Binary = "qemu-system-x86_64"
	}
	if cfg.Machine == "" {
		cfg.Machine = "q35"
	}
	if cfg.Machine != "q35" && cfg.Machine != "microvm" {
		return nil, fmt.Errorf("qemu: unknown machine type %q (want q35 or microvm): %w", cfg.Machine, errdefs.ErrInvalidArgument)
	}
	if cfg.ShareFile == nil {
		return nil, errors.New("qemu: Config.ShareFile is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	out, err := exec.Command(cfg.Binary, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("qemu: %s --version: %w (install the Debian package qemu-system-x86)", cfg.Binary, err)
	}
	version := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	d := &Driver{cfg: cfg, log: cfg.Logger.With("driver", "qemu"), version: version}
	if !cfg.Unconfined {
		help, _ := exec.Command(cfg.Binary, "-help").Output()
		if d.sandbox = sandboxSupported(string(help)); !d.sandbox {
			d.log.Warn("this QEMU has no -sandbox (built without seccomp): VMMs run without a system call filter", "qemu", version)
		}
	}
	return d, nil
}

// Name is "qemu" for q35 and "qemu-microvm" for microvm, hypeman's names.
func (d *Driver) Name() string {
	if d.cfg.Machine == "microvm" {
		return "qemu-microvm"
	}
	return "qemu"
}

// Accelerator returns the accelerator new boots use, probing if needed.
func (d *Driver) Accelerator(ctx context.Context, kernel string) (string, error) {
	return d.chooseAccel(ctx, kernel)
}

// Boot shares the boot assets into spec.Dir (first boot only), starts QEMU
// and returns once its QMP socket answers; the guest boots asynchronously.
func (d *Driver) Boot(ctx context.Context, spec hypervisor.Spec, assets hypervisor.BootAssets) (hypervisor.VM, json.RawMessage, error) {
	if err := validateSpec(spec); err != nil {
		return nil, nil, err
	}
	for src, name := range map[string]string{assets.Kernel: kernelFile, assets.Initramfs: initrdFile} {
		dst := filepath.Join(spec.Dir, name)
		if _, err := os.Stat(dst); err == nil {
			continue // the instance keeps the assets it was created with
		}
		if src == "" {
			return nil, nil, fmt.Errorf("qemu boot %s: no %s given and none in the instance directory: %w", spec.ID, name, errdefs.ErrInvalidArgument)
		}
		if err := d.cfg.ShareFile(ctx, src, dst); err != nil {
			return nil, nil, fmt.Errorf("qemu boot %s: share %s: %w", spec.ID, name, err)
		}
	}
	var st driverState
	if len(spec.DriverState) > 0 {
		var err error
		if st, err = decodeDriverState(spec.DriverState); err != nil {
			return nil, nil, err
		}
	} else {
		// Probe with the shared asset's path, not the instance's copy, so the
		// cached verdict serves every instance.
		probeKernel := assets.Kernel
		if probeKernel == "" {
			probeKernel = filepath.Join(spec.Dir, kernelFile)
		}
		accel, err := d.chooseAccel(ctx, probeKernel)
		if err != nil {
			return nil, nil, err
		}
		st = driverState{Version: driverStateVersion, Machine: d.cfg.Machine, Accel: accel, QEMUVersion: d.version}
		if st.Machine == "microvm" && accel == "tcg" {
			st.TSCKHz = hostTSCKHz()
		}
	}
	// A cold boot starts from a fresh sparse memory file.
	if err := d.DiscardSavedState(spec.Dir); err != nil {
		return nil, nil, err
	}
	v, err := d.launch(ctx, spec, st, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("qemu boot %s: %w", spec.ID, err)
	}
	raw, _ := json.Marshal(st)
	return v, raw, nil
}

// launch starts QEMU with the arguments for spec, passes the NIC's TAP as
// tapFD and the state file (if any) as stateFD(spec), and connects to QMP.
func (d *Driver) launch(ctx context.Context, spec hypervisor.Spec, st driverState, state *os.File) (*vm, error) {
	if !sharedRAM(spec, state != nil) {
		if err := checkOwnMemory(spec.Dir); err != nil {
			return nil, err
		}
	}
	args := buildArgs(spec, st, state != nil)
	if d.sandbox {
		args = append(args, sandboxArgs...)
	}
	rotateVMMLog(spec.Dir, d.cfg.LogLimits)
	logf, err := os.OpenFile(filepath.Join(spec.Dir, hypervisor.VMMLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- %s %s %s\n", time.Now().UTC().Format(time.RFC3339), d.cfg.Binary, strings.Join(args, " "))
	// Stale sockets from a previous VMM would make QMP dial the dead one.
	os.Remove(filepath.Join(spec.Dir, qmpSocket))
	os.Remove(filepath.Join(spec.Dir, agentSocket))
	os.Remove(filepath.Join(spec.Dir, consoleSocket))

	// Not CommandContext: the VMM must outlive the request that starts it.
	cmd := exec.Command(d.cfg.Binary, args...)
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own session: signals aimed at the daemon's process group (a
	// terminal's ^C, a supervisor's stop) never reach the VMs, which a
	// restarted daemon adopts.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if spec.NIC != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, spec.NIC.TAP) // tapFD
	}
	if state != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, state) // stateFD(spec)
	}
	confine := confinement{dropCaps: !d.cfg.Unconfined, noHostHugePages: !d.cfg.HostHugePages}
	if _, err := confine.start(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", d.cfg.Binary, err)
	}
	exited := make(chan struct{})
	go func() { // owner: the VMM process; ends when it exits
		cmd.Wait()
		close(exited)
	}()
	start, err := proc.StartTime(cmd.Process.Pid)
	if err != nil {
		cmd.Process.Kill()
		<-exited
		return nil, fmt.Errorf("identify VMM: %s", d.tailLog(spec.Dir, err))
	}
	v := &vm{drv: d, spec: spec, proc: hypervisor.Process{PID: cmd.Process.Pid, StartTime: start}, exited: exited,
		shared: sharedRAM(spec, state != nil),
		log:    d.log.With("instance", spec.ID, "pid", cmd.Process.Pid)}
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// The console first: QEMU waits for it before it opens QMP.
	if v.con, err = dialConsole(qctx, spec.Dir, d.cfg.LogLimits, exited, v.log); err != nil {
		cmd.Process.Kill()
		<-exited
		return nil, errors.New(d.tailLog(spec.Dir, err))
	}
	if v.qmp, err = dialQMP(qctx, filepath.Join(spec.Dir, qmpSocket), exited); err != nil {
		cmd.Process.Kill()
		<-exited
		v.con.close()
		return nil, errors.New(d.tailLog(spec.Dir, err))
	}
	return v, nil
}

// tailLog appends the end of vmm.log, where QEMU explains why it failed.
func (d *Driver) tailLog(dir string, err error) string {
	raw, _ := os.ReadFile(filepath.Join(dir, hypervisor.VMMLog))
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	var tail []string
	for i := len(lines) - 1; i >= 0 && len(tail) < 3; i-- {
		if strings.HasPrefix(lines[i], "--- ") {
			break
		}
		tail = append([]string{lines[i]}, tail...)
	}
	if len(tail) == 0 {
		return err.Error()
	}
	return fmt.Sprintf("%v: qemu says: %s", err, strings.Join(tail, " | "))
}

// Restore starts QEMU on the saved state in spec.Dir, loads it, consumes
// the state file and resumes the guest.
func (d *Driver) Restore(ctx context.Context, spec hypervisor.Spec) (hypervisor.VM, error) {
	if err := validateSpec(spec); err != nil {
		return nil, err
	}
	st, err := decodeDriverState(spec.DriverState)
	if err != nil {
		return nil, err
	}
	statePath := filepath.Join(spec.Dir, stateFile)
	if want, err := os.ReadFile(filepath.Join(spec.Dir, devicesFile)); err == nil && string(want) != hypervisor.DeviceSignature(spec) {
		return nil, fmt.Errorf("qemu restore %s: the saved state has devices %q, the spec %q: %w",
			spec.ID, want, hypervisor.DeviceSignature(spec), errdefs.ErrInvalidState)
	}
	f, err := openState(statePath)
	if err != nil {
		return nil, fmt.Errorf("qemu restore %s: %w", spec.ID, err)
	}
	defer f.Close()
	if _, err := os.Stat(filepath.Join(spec.Dir, memoryFile)); err != nil {
		return nil, fmt.Errorf("qemu restore %s: memory file: %w", spec.ID, errors.Join(err, errdefs.ErrInvalidState))
	}
	v, err := d.launch(ctx, spec, st, f)
	if err != nil {
		return nil, fmt.Errorf("qemu restore %s: %w", spec.ID, err)
	}
	if err := v.loadState(ctx); err != nil {
		v.kill()
		// The state file does not load into this machine: the image is
		// unusable as it is (409), every file is left in place.
		return nil, fmt.Errorf("qemu restore %s: saved state does not load: %s: %w", spec.ID, d.tailLog(spec.Dir, err), errdefs.ErrInvalidState)
	}
	// From here the guest may run: the saved state no longer describes the
	// memory file, so it must not survive as a standby image.
	if err := os.Remove(statePath); err != nil {
		v.kill()
		return nil, fmt.Errorf("qemu restore %s: consume state: %w", spec.ID, err)
	}
	os.Remove(filepath.Join(spec.Dir, devicesFile))
	os.Remove(filepath.Join(spec.Dir, stateRAMFile))
	syncDir(spec.Dir)
	if err := v.Resume(ctx); err != nil {
		v.kill()
		return nil, fmt.Errorf("qemu restore %s: %w", spec.ID, err)
	}
	return v, nil
}

// migrationMagic opens every QEMU migration stream ("QEVM", version 3).
var migrationMagic = []byte{'Q', 'E', 'V', 'M', 0, 0, 0, 3}

// openState opens a state file and checks its header, so a missing or
// corrupt file is a clear error before any VMM starts.
func openState(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("saved state file %s is missing: %w", path, errdefs.ErrInvalidState)
		}
		return nil, fmt.Errorf("open saved state: %w", err)
	}
	head := make([]byte, len(migrationMagic))
	if _, err := io.ReadFull(f, head); err != nil || !bytes.Equal(head, migrationMagic) {
		f.Close()
		return nil, fmt.Errorf("saved state file %s is corrupt (no QEMU migration header): %w", path, errdefs.ErrInvalidState)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Attach adopts a live QEMU started by an earlier daemon.
func (d *Driver) Attach(ctx context.Context, spec hypervisor.Spec, p hypervisor.Process) (hypervisor.VM, error) {
	h, err := proc.Open(p.PID, p.StartTime)
	if err != nil {
		return nil, fmt.Errorf("qemu attach %s: %w", spec.ID, err)
	}
	argv, err := proc.Cmdline(p.PID)
	if err != nil || !isOurVMM(argv, spec) {
		h.Close()
		return nil, fmt.Errorf("qemu attach %s: pid %d is not this instance's VMM: %w", spec.ID, p.PID, errdefs.ErrNotFound)
	}
	exited := make(chan struct{})
	watchCtx, stopWatch := context.WithCancel(context.Background())
	go func() { // owner: the vm; Close stops it
		defer h.Close()
		if h.Wait(watchCtx) == nil {
			close(exited)
		}
	}()
	v := &vm{drv: d, spec: spec, proc: p, exited: exited, stopWatch: stopWatch,
		shared: strings.Contains(strings.Join(argv, " "), ",share=off"),
		log:    d.log.With("instance", spec.ID, "pid", p.PID)}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if v.qmp, err = dialQMP(qctx, filepath.Join(spec.Dir, qmpSocket), exited); err != nil {
		stopWatch()
		return nil, fmt.Errorf("qemu attach %s: %w", spec.ID, err)
	}
	// Reconnect the console drain. A VMM started before consoles were
	// sockets writes console.log itself: nothing to drain.
	if !strings.Contains(strings.Join(argv, " "), "path="+optEscape(filepath.Join(spec.Dir, consoleSocket))) {
		return v, nil
	}
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	defer ccancel()
	if v.con, err = dialConsole(cctx, spec.Dir, d.cfg.LogLimits, exited, v.log); err != nil {
		v.log.Warn("adopted VMM: console not drained", "err", err)
	}
	return v, nil
}

func isOurVMM(argv []string, spec hypervisor.Spec) bool {
	name, mem := false, false
	for i, a := range argv {
		if a == "-name" && i+1 < len(argv) && argv[i+1] == processName(spec.ID) {
			name = true
		}
		if strings.Contains(a, "mem-path="+optEscape(filepath.Join(spec.Dir, memoryFile))) {
			mem = true
		}
	}
	return name && mem
}

// Find returns the live QEMU processes running spec's instance directory.
func (d *Driver) Find(spec hypervisor.Spec) ([]hypervisor.Process, error) {
	pids, err := proc.Find("-name", processName(spec.ID))
	if err != nil {
		return nil, err
	}
	var out []hypervisor.Process
	for _, pid := range pids {
		argv, err := proc.Cmdline(pid)
		if err != nil || !isOurVMM(argv, spec) {
			continue
		}
		start, err := proc.StartTime(pid)
		if err != nil || !proc.Alive(pid, start) {
			continue
		}
		out = append(out, hypervisor.Process{PID: pid, StartTime: start})
	}
	return out, nil
}

// AcceleratorOf reads the accelerator from a driver state, for display.
func (d *Driver) AcceleratorOf(raw []byte) string {
	st, err := decodeDriverState(raw)
	if err != nil {
		return ""
	}
	return st.Accel
}

// MemoryFile is the guest RAM file of an instance directory.
func (d *Driver) MemoryFile(dir string) string { return filepath.Join(dir, memoryFile) }

// HasSavedState reports whether dir holds a state file.
func (d *Driver) HasSavedState(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, stateFile))
	return err == nil
}

// DiscardSavedState removes the state and memory files.
func (d *Driver) DiscardSavedState(dir string) error {
	for _, name := range []string{stateFile, devicesFile, stateRAMFile, memoryFile} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("discard %s: %w", name, err)
		}
	}
	return nil
}

func validateSpec(spec hypervisor.Spec) error {
	switch {
	case spec.ID == "" || spec.Dir == "":
		return fmt.Errorf("qemu: spec needs an id and a directory: %w", errdefs.ErrInvalidArgument)
	case spec.VCPUs < 1:
		return fmt.Errorf("qemu: vcpus must be at least 1: %w", errdefs.ErrInvalidArgument)
	case spec.MemoryBytes < 64<<20 || spec.MemoryBytes%(1<<20) != 0:
		return fmt.Errorf("qemu: memory must be a whole number of MiB, at least 64 MiB: %w", errdefs.ErrInvalidArgument)
	}
	if err := hypervisor.CheckDevices(spec); err != nil {
		return fmt.Errorf("qemu %s: %w", spec.ID, err)
	}
	return checkPaths(spec.Dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
