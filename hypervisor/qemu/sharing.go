package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor"
)

// Memory sharing (hypervisor.MemorySharer). Forks that share a parked
// parent's memory file hold hard links of it and run it with
// memory-backend-file,share=off: QEMU maps it MAP_PRIVATE, every fork
// reads the same page cache, and a guest write copies the page into the
// VMM's anonymous memory. QEMU 7.2 opens the file read-write even then
// (readonly=on would make the RAM a ROM), so the file is immutable by
// rule: this driver never maps share=on a memory file with more than one
// link (checkOwnMemory, in every launch), and nothing here discards guest
// RAM (QEMU punches holes in file-backed RAM on discard, even private):
// the machine has no balloon, virtio-mem, or postcopy.

var _ hypervisor.MemorySharer = (*Driver)(nil)

// Temporaries of LinkMemory and OwnMemory, named like the clone package's
// (".<name>.zygote-tmp-…"): copies skip them and the reconcile sweeps one
// a crash left.
const (
	linkTemp = "." + memoryFile + ".zygote-tmp-link"
	ownTemp  = "." + memoryFile + ".zygote-tmp-own"
)

// LinkMemory makes dstDir's memory file a hard link of srcDir's.
func (d *Driver) LinkMemory(srcDir, dstDir string) error {
	src, dst := filepath.Join(srcDir, memoryFile), filepath.Join(dstDir, memoryFile)
	tmp := filepath.Join(dstDir, linkTemp)
	os.Remove(tmp)
	if err := os.Link(src, tmp); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("link memory: %w", errors.Join(err, errdefs.ErrInvalidState))
		}
		return fmt.Errorf("link memory: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("link memory: %w", err)
	}
	return syncDir(dstDir)
}

// OwnMemory breaks the link of a shared memory file: a copy (reflink-first
// through Config.CopyMemory), fsynced, renamed over it.
func (d *Driver) OwnMemory(ctx context.Context, dir string) (bool, error) {
	path := filepath.Join(dir, memoryFile)
	links, err := linkCount(path)
	if err != nil || links <= 1 {
		return false, err
	}
	tmp := filepath.Join(dir, ownTemp)
	os.Remove(tmp)
	if err := d.copyMemory(ctx, path, tmp); err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("own memory: copy: %w", diskFull(err))
	}
	if err := syncFile(tmp); err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("own memory: %w", diskFull(err))
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("own memory: %w", err)
	}
	return true, syncDir(dir)
}

// copyMemory makes dst an own copy of src (reflink-first, sparse).
func (d *Driver) copyMemory(ctx context.Context, src, dst string) error {
	if d.cfg.CopyMemory != nil {
		return d.cfg.CopyMemory(ctx, src, dst)
	}
	_, err := clone.File(ctx, src, dst, clone.Options{Logger: d.log})
	return err
}

// MemoryLinks reports the memory file's inode and link count.
func (d *Driver) MemoryLinks(dir string) (string, int, error) {
	fi, err := os.Stat(filepath.Join(dir, memoryFile))
	if errors.Is(err, os.ErrNotExist) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, err
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino), int(st.Nlink), nil
}

func linkCount(path string) (int, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return int(fi.Sys().(*syscall.Stat_t).Nlink), nil
}

// checkOwnMemory refuses to map a memory file share=on (written in place)
// while another instance holds a link to it: that instance would see the
// writes (DESIGN invariant 1).
func checkOwnMemory(dir string) error {
	links, err := linkCount(filepath.Join(dir, memoryFile))
	if err != nil {
		return err
	}
	if links > 1 {
		return fmt.Errorf("the memory file has %d links: it is shared with other instances and must not be written in place (own it first, or run it with shared memory): %w", links, errdefs.ErrInvalidState)
	}
	return nil
}

// sharedRAM reports whether a launch maps the memory file privately.
func sharedRAM(spec hypervisor.Spec, incoming bool) bool { return spec.SharedMemory && incoming }

// markStateRAM records, before the state file is published, whether its
// stream carries RAM (a VM on a private mapping saves its RAM in it).
func markStateRAM(dir string, ram bool) error {
	path := filepath.Join(dir, stateRAMFile)
	if !ram {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	return writeFileSync(path, []byte("1"))
}

func stateHasRAM(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, stateRAMFile))
	return err == nil
}

var _ hypervisor.MemoryUsageReporter = (*vm)(nil)

// MemoryUsage reads the smaps of the guest-RAM mapping: a sharing VM's
// anonymous pages are its own, the rest is the shared file's page cache;
// an owning VM's resident RAM is all its own.
func (v *vm) MemoryUsage() (hypervisor.MemoryUsage, error) {
	var u hypervisor.MemoryUsage
	if err := v.alive(); err != nil {
		return u, err
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", v.proc.PID))
	if err != nil {
		return u, err
	}
	var rss, anon int64
	in := false
	for _, line := range strings.Split(string(raw), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if !strings.HasSuffix(fields[0], ":") {
			in = len(fields) >= 6 && fields[5] == filepath.Join(v.spec.Dir, memoryFile)
			continue
		}
		if !in || len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "Rss:":
			rss += kb << 10
		case "Anonymous:":
			anon += kb << 10
		}
	}
	if v.shared {
		u.SharedBytes, u.PrivateBytes = rss-anon, anon
	} else {
		u.PrivateBytes = rss
	}
	return u, nil
}
