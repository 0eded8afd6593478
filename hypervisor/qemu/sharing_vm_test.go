package qemu_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/guest/guesttest"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/hypervisor/qemu"
)

func newSharingDriver(t testing.TB) *qemu.Driver {
	d, err := qemu.New(qemu.Config{ShareFile: func(ctx context.Context, src, dst string) error {
		_, err := clone.File(ctx, src, dst, clone.Options{NoSync: true, Logger: slog.New(slog.DiscardHandler)})
		return err
	}})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// forkDir makes a fork directory of a parked VM the way the manager does:
// its own copies of every file, then (shared) its memory file replaced by
// a hard link of the source's.
func forkDir(t testing.TB, d *qemu.Driver, src string, shared bool) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "fork")
	if _, err := clone.Dir(context.Background(), src, dst, clone.Options{NoSync: true, Logger: slog.New(slog.DiscardHandler)}); err != nil {
		t.Fatal(err)
	}
	if shared {
		if err := d.LinkMemory(src, dst); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func park(t testing.TB, vm hypervisor.VM) hypervisor.SaveStats {
	t.Helper()
	ctx := context.Background()
	if err := vm.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := vm.SaveState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vm.Quit(ctx)
	return st
}

func memSum(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}

// writeWatch reports every write to one inode (write, fallocate, a
// reflink into it: fanotify FAN_MODIFY). Writes through a shared
// mapping raise no event: ramMapping checks those (a private map).
type writeWatch struct{ fd int }

func watchWrites(t testing.TB, path string) *writeWatch {
	t.Helper()
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_NONBLOCK|unix.FAN_CLOEXEC, unix.O_RDONLY)
	if err != nil {
		t.Skipf("fanotify: %v", err)
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD, unix.FAN_MODIFY, unix.AT_FDCWD, path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return &writeWatch{fd: fd}
}

func (w *writeWatch) writes() int {
	buf := make([]byte, 4096)
	n, err := unix.Read(w.fd, buf)
	if err != nil || n <= 0 {
		return 0
	}
	return n / int(unsafe.Sizeof(unix.FanotifyEventMetadata{}))
}

// ramMapping returns the permissions of the VMM's mapping of its memory
// file ("rw-p": private, "rw-s": shared).
func ramMapping(t testing.TB, pid int, dir string) string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 6 && fields[5] == filepath.Join(dir, "memory") {
			return fields[1]
		}
	}
	t.Fatalf("pid %d maps no %s/memory", pid, dir)
	return ""
}

// TestSharedMemoryForks: forks of one parked VM run on hard links of its
// memory file (share=off) and never change it; the source owns a copy
// before it runs again; a sharing fork's standby keeps its own writes and
// leaves its sibling's memory alone; an owning fork of a parked sharing
// fork (share=on, its delta loaded into its own copy) keeps them too.
func TestSharedMemoryForks(t *testing.T) {
	guesttest.QEMU(t)
	assets := guesttest.Assets(t)
	d := newSharingDriver(t)
	ctx := context.Background()
	srcDir := t.TempDir()
	src := hypervisor.Spec{ID: "sharesrc", Dir: srcDir, VCPUs: 1, MemoryBytes: 256 << 20}
	vm, state, err := d.Boot(ctx, src, hypervisor.BootAssets{Kernel: assets.Kernel, Initramfs: assets.Initramfs})
	if err != nil {
		t.Fatal(err)
	}
	src.DriverState = state
	guestSh(t, vm, "echo parent > /dev/shm/who; dd if=/dev/urandom of=/dev/shm/blob bs=1M count=16 2>/dev/null; md5sum /dev/shm/blob > /dev/shm/blob.md5")
	park(t, vm)
	base := filepath.Join(srcDir, "memory")
	baseSum := memSum(t, base)
	watch := watchWrites(t, base)

	spec := func(id, dir string, shared bool) hypervisor.Spec {
		s := src
		s.ID, s.Dir, s.SharedMemory = id, dir, shared
		return s
	}
	f1, f2 := spec("sharef1", forkDir(t, d, srcDir, true), true), spec("sharef2", forkDir(t, d, srcDir, true), true)
	if _, err := d.Restore(ctx, spec("refused", f1.Dir, false)); err == nil {
		t.Fatal("a share=on restore of a linked memory file was allowed")
	}
	vm1, err := d.Restore(ctx, f1)
	if err != nil {
		t.Fatal(err)
	}
	defer vm1.Quit(ctx)
	vm2, err := d.Restore(ctx, f2)
	if err != nil {
		t.Fatal(err)
	}
	defer vm2.Quit(ctx)
	for _, c := range []struct {
		vm  hypervisor.VM
		dir string
	}{{vm1, f1.Dir}, {vm2, f2.Dir}} {
		if got := guestSh(t, c.vm, "cat /dev/shm/who; md5sum -c -s /dev/shm/blob.md5 && echo blob-ok"); got != "parent\nblob-ok" {
			t.Fatalf("fork sees %q", got)
		}
		if perm := ramMapping(t, c.vm.Process().PID, c.dir); perm != "rw-p" {
			t.Fatalf("a sharing fork maps its memory %s, want a private map", perm)
		}
	}
	guestSh(t, vm1, "echo f1 > /dev/shm/who; dd if=/dev/urandom of=/dev/shm/blob bs=1M count=2 conv=notrunc 2>/dev/null")

	// The source runs again: it owns a copy first.
	if copied, err := d.OwnMemory(ctx, srcDir); err != nil || !copied {
		t.Fatalf("OwnMemory of the source = %v, %v", copied, err)
	}
	vm, err = d.Restore(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	if perm := ramMapping(t, vm.Process().PID, srcDir); perm != "rw-s" {
		t.Fatalf("the owning source maps its memory %s", perm)
	}
	guestSh(t, vm, "echo parent2 > /dev/shm/who; dd if=/dev/urandom of=/dev/shm/blob bs=1M count=4 conv=notrunc 2>/dev/null")
	park(t, vm)
	os.RemoveAll(srcDir) // and deleting the source is harmless

	// The sharing fork parks and comes back with its own writes.
	st := park(t, vm1)
	t.Logf("standby of a sharing fork: state %d bytes (%d bytes of its own pages) in %s", st.StateBytes, st.DirtyBytes, st.Duration)
	// The fork wrote 2 MiB of random bytes into /dev/shm (plus what its
	// kernel wrote): its state carries those pages, not its 256 MiB of RAM
	// (unfiltered: ~80 MB here). A kept page the guest zeroed is a 1-byte
	// ZERO record in the stream, so the state may be a little smaller than
	// its own pages; the 2 MiB of random bytes are not.
	if st.StateBytes > 24<<20 || st.StateBytes < 2<<20 || st.DirtyBytes < 2<<20 || st.DirtyBytes > 24<<20 {
		t.Fatalf("state %d bytes with %d bytes of own pages: want about what the guest wrote", st.StateBytes, st.DirtyBytes)
	}
	vm1, err = d.Restore(ctx, f1)
	if err != nil {
		t.Fatal(err)
	}
	if got := guestSh(t, vm1, "cat /dev/shm/who; md5sum -c -s /dev/shm/blob.md5 || echo blob-changed"); got != "f1\nblob-changed" {
		t.Fatalf("restored sharing fork sees %q", got)
	}
	if got := guestSh(t, vm2, "cat /dev/shm/who; md5sum -c -s /dev/shm/blob.md5 && echo blob-ok"); got != "parent\nblob-ok" {
		t.Fatalf("the sibling sees %q", got)
	}
	park(t, vm1)

	// An owning fork of the parked sharing fork: own copy, share=on.
	o := spec("shareown", forkDir(t, d, f1.Dir, false), false)
	vmo, err := d.Restore(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if got := guestSh(t, vmo, "cat /dev/shm/who"); got != "f1" {
		t.Fatalf("owning fork of a sharing fork sees %q", got)
	}
	vmo.Quit(ctx)

	if n := watch.writes(); n != 0 {
		t.Fatalf("%d writes into the shared memory file", n)
	}
	if got := memSum(t, filepath.Join(f2.Dir, "memory")); got != baseSum {
		t.Fatal("the shared memory file changed")
	}
}
