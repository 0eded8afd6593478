package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/internal/proc"
)

// vm is one QEMU process.
type vm struct {
	drv       *Driver
	spec      hypervisor.Spec
	proc      hypervisor.Process
	qmp       *qmp
	con       *console // nil when an adopted VMM has no console socket
	exited    chan struct{}
	stopWatch context.CancelFunc // adopted VMMs only: stops the pidfd watcher
	log       *slog.Logger
	saved     atomic.Bool // SaveState succeeded: Quit evicts the memory file's page cache
	// shared: the guest RAM is a private mapping of a (maybe shared)
	// memory file (sharing.go).
	shared bool
}

func (v *vm) Process() hypervisor.Process { return v.proc }
func (v *vm) Exited() <-chan struct{}     { return v.exited }

func (v *vm) alive() error {
	select {
	case <-v.exited:
		return fmt.Errorf("qemu %s: the VMM has exited: %w", v.spec.ID, errdefs.ErrUnavailable)
	default:
		return nil
	}
}

func (v *vm) Pause(ctx context.Context) error {
	if err := v.alive(); err != nil {
		return err
	}
	return v.qmp.execute(ctx, "stop", nil, nil)
}

func (v *vm) Resume(ctx context.Context) error {
	if err := v.alive(); err != nil {
		return err
	}
	return v.qmp.execute(ctx, "cont", nil, nil)
}

type statusInfo struct {
	Running bool   `json:"running"`
	Status  string `json:"status"`
}

func (v *vm) status(ctx context.Context) (statusInfo, error) {
	var st statusInfo
	if err := v.alive(); err != nil {
		return st, err
	}
	err := v.qmp.execute(ctx, "query-status", nil, &st)
	return st, err
}

func (v *vm) Paused(ctx context.Context) (bool, error) {
	st, err := v.status(ctx)
	return !st.Running, err
}

type migrateInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}

func (v *vm) ignoreShared(ctx context.Context, on bool) error {
	// x-ignore-shared: RAM in a shared file-backed region is not streamed;
	// the memory file already is the RAM, so the state file stays small
	// (tens to hundreds of KB) whatever the guest's size. A VM on a
	// private mapping (sharing.go) streams its RAM, with the capability
	// off: the stream's format depends on it, and a loader with it on
	// refuses RAM pages for a shared mapping, which an owning restore of
	// a sharing VM's state needs to write into its own memory file.
	return v.qmp.execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}},
	}, nil)
}

// SaveState streams the device state of the paused VM into state.tmp,
// makes it and the memory file durable, then renames it to state: a crash
// at any point leaves either no state file or a complete one.
func (v *vm) SaveState(ctx context.Context) (hypervisor.SaveStats, error) {
	begin := time.Now()
	var stats hypervisor.SaveStats
	st, err := v.status(ctx)
	if err != nil {
		return stats, err
	}
	if st.Running {
		return stats, fmt.Errorf("qemu %s: save state of a running VM (pause it first): %w", v.spec.ID, errdefs.ErrInvalidState)
	}
	if err := v.ignoreShared(ctx, !v.shared); err != nil {
		return stats, err
	}
	// Named like the clone package's temporaries, so copies skip it and the
	// reconcile sweeps one a crash left.
	tmp := filepath.Join(v.spec.Dir, ".state.zygote-tmp-save")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return stats, err
	}
	defer os.Remove(tmp) // no-op after the rename
	defer f.Close()
	if v.shared {
		// The stream carries RAM: it goes through the filter that keeps
		// only the guest's own pages (ramfilter.go).
		if err := v.migrateFiltered(ctx, f, &stats); err != nil {
			return stats, fmt.Errorf("qemu %s: save state: %w", v.spec.ID, diskFull(err))
		}
	} else if err := v.migrateTo(ctx, f); err != nil {
		return stats, fmt.Errorf("qemu %s: save state: %w", v.spec.ID, diskFull(err))
	}
	if err := f.Sync(); err != nil {
		return stats, fmt.Errorf("fsync state: %w", diskFull(err))
	}
	if fi, err := f.Stat(); err == nil {
		stats.StateBytes = fi.Size()
	}
	if err := syncFile(filepath.Join(v.spec.Dir, memoryFile)); err != nil {
		return stats, fmt.Errorf("fsync memory: %w", diskFull(err))
	}
	// The device set goes beside the state, before it: QEMU loads a state
	// into a machine whose disks differ in mode (or a NIC in MAC) without
	// complaint, so Restore checks it.
	if err := writeFileSync(filepath.Join(v.spec.Dir, devicesFile), []byte(hypervisor.DeviceSignature(v.spec))); err != nil {
		return stats, diskFull(err)
	}
	// Whether the stream carries RAM, which decides how it loads.
	if err := markStateRAM(v.spec.Dir, v.shared); err != nil {
		return stats, diskFull(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.spec.Dir, stateFile)); err != nil {
		return stats, err
	}
	if err := syncDir(v.spec.Dir); err != nil {
		// The caller resumes the VM on failure: a published state file
		// beside memory that keeps changing would be a stale image.
		os.Remove(filepath.Join(v.spec.Dir, stateFile))
		return stats, diskFull(err)
	}
	stats.Duration = time.Since(begin)
	v.saved.Store(true)
	return stats, nil
}

// migrateTo streams the migration into the file (or pipe) f.
func (v *vm) migrateTo(ctx context.Context, f *os.File) error {
	if err := v.qmp.executeWithFD(ctx, "getfd", map[string]any{"fdname": "zygote-state"}, int(f.Fd()), nil); err != nil {
		return err
	}
	if err := v.qmp.execute(ctx, "migrate", map[string]any{"uri": "fd:zygote-state"}, nil); err != nil {
		return err
	}
	return v.waitMigration(ctx)
}

// migrateFiltered streams the migration of a sharing VM through a pipe and
// the RAM filter into out: only the pages the guest wrote (its anonymous
// copies, read from the paused VMM's page map) stay in the stream.
func (v *vm) migrateFiltered(ctx context.Context, out *os.File, stats *hypervisor.SaveStats) error {
	keep, dirtyBytes, err := dirtyPages(v.proc.PID, filepath.Join(v.spec.Dir, memoryFile))
	if err != nil {
		return fmt.Errorf("scan the guest's own pages: %w", err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	type result struct {
		f   *ramFilter
		err error
	}
	done := make(chan result, 1)
	go func() { // owner: migrateFiltered, which waits for it
		f, err := filterRAM(out, pr, keep)
		if err != nil {
			io.Copy(io.Discard, pr) // never leave QEMU blocked on a full pipe
		}
		done <- result{f, err}
	}()
	err = v.migrateTo(ctx, pw)
	pw.Close() // QEMU holds its own copy, closed when the migration ends
	if err != nil {
		pr.Close()
		<-done
		return err
	}
	var res result
	select {
	case res = <-done:
	case <-time.After(30 * time.Second):
		pr.Close()
		<-done
		return errors.New("the migration completed but its stream did not end")
	}
	if res.err != nil {
		return fmt.Errorf("filter the migration stream: %w", res.err)
	}
	v.log.Debug("sharing VM saved its own pages", "dirty_bytes", dirtyBytes, "pages_kept", res.f.Kept, "pages_dropped", res.f.Dropped)
	stats.DirtyBytes = res.f.Kept * guestPage
	return nil
}

func (v *vm) waitMigration(ctx context.Context) error {
	for {
		var mi migrateInfo
		if err := v.qmp.execute(ctx, "query-migrate", nil, &mi); err != nil {
			return err
		}
		switch mi.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-v.exited:
			return errors.New("the VMM exited during migration")
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// loadState runs the incoming migration from stateFD and waits until the
// machine is loaded and paused.
func (v *vm) loadState(ctx context.Context) error {
	if err := v.ignoreShared(ctx, !stateHasRAM(v.spec.Dir)); err != nil {
		return err
	}
	if err := v.qmp.execute(ctx, "migrate-incoming", map[string]any{"uri": fmt.Sprintf("fd:%d", stateFD(v.spec))}, nil); err != nil {
		return err
	}
	for {
		st, err := v.status(ctx)
		if err != nil {
			return fmt.Errorf("load saved state: %w", err)
		}
		switch st.Status {
		case "inmigrate":
		case "paused", "prelaunch":
			return nil
		default:
			return fmt.Errorf("load saved state: VM in unexpected state %q", st.Status)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-v.exited:
			return errors.New("the VMM exited while loading the saved state")
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func (v *vm) DialAgent(ctx context.Context) (net.Conn, error) {
	if err := v.alive(); err != nil {
		return nil, err
	}
	var d net.Dialer
	return d.DialContext(ctx, "unix", filepath.Join(v.spec.Dir, agentSocket))
}

// Quit asks QEMU to exit, and kills it if it does not within a few seconds.
func (v *vm) Quit(ctx context.Context) error {
	if v.alive() == nil {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := v.qmp.execute(qctx, "quit", nil, nil); err != nil {
			v.log.Debug("qmp quit failed, killing", "err", err)
		}
		cancel()
	}
	select {
	case <-v.exited:
	case <-time.After(5 * time.Second):
		v.kill()
	case <-ctx.Done():
		v.kill()
	}
	// Never the shared file of a sharing VM: its page cache is what the
	// other forks map.
	if v.saved.Load() && !v.drv.keepPageCache && !v.shared {
		evictPageCache(filepath.Join(v.spec.Dir, memoryFile), v.log)
	}
	v.Close()
	return nil
}

// evictPageCache drops the (clean: SaveState fsynced it) page cache of a
// parked VM's memory file. A parked VM then costs no RAM, and the restore
// faults its pages back in small folios: the guest's sequential writes
// at boot leave large folios (up to 2 MiB) behind, and a 4 KiB guest write
// into one makes the next re-standby write the whole folio.
func evictPageCache(path string, log *slog.Logger) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		log.Debug("evict the memory file's page cache", "err", err)
	}
}

// kill SIGKILLs the VMM (identity-checked) and waits for it to exit.
func (v *vm) kill() {
	if h, err := proc.Open(v.proc.PID, v.proc.StartTime); err == nil {
		h.Signal(syscall.SIGKILL)
		h.Close()
	}
	select {
	case <-v.exited:
	case <-time.After(10 * time.Second):
		v.log.Error("VMM did not exit after SIGKILL")
	}
	v.Close()
}

func (v *vm) Close() error {
	if v.stopWatch != nil {
		v.stopWatch()
	}
	v.con.close()
	return v.qmp.close()
}

// writeFileSync writes path atomically (temporary file, fsync, rename).
func writeFileSync(path string, b []byte) error {
	// Named like the clone package's temporaries: copies skip it and the
	// reconcile sweeps one a crash left.
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".zygote-tmp-write")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// diskFull classifies an out-of-space failure (ours, or QEMU's as text)
// as errdefs.ErrResourceExhausted, so the API answers 507.
func diskFull(err error) error {
	if errors.Is(err, syscall.ENOSPC) || strings.Contains(err.Error(), "No space left on device") {
		return fmt.Errorf("%w: %w", errdefs.ErrResourceExhausted, err)
	}
	return err
}
