//go:build linux

package uffd

import (
	"errors"
	"os"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func requireUFFD(t *testing.T) {
	t.Helper()
	if s := Probe(); !s.Available() {
		if os.Getenv("ZYGOTE_REQUIRE_PRIVILEGED") == "1" {
			t.Fatalf("uffd: needs root or /dev/userfaultfd: %v", s.Err())
		}
		t.Skipf("uffd: needs root or /dev/userfaultfd: %v", s.Err())
	}
}

// ioc is the kernel's _IOC(dir, type, nr, size).
func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | 0xAA<<8 | nr }

func TestIoctlNumbers(t *testing.T) {
	const rw, r = 3, 2 // _IOC_READ|_IOC_WRITE, _IOC_READ
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"API", ioctlAPI, ioc(rw, 0x3F, unsafe.Sizeof(uffdioAPI{}))},
		{"REGISTER", ioctlRegister, ioc(rw, 0x00, unsafe.Sizeof(uffdioReg{}))},
		{"UNREGISTER", ioctlUnregister, ioc(r, 0x01, unsafe.Sizeof(uffdioRange{}))},
		{"WAKE", ioctlWake, ioc(r, 0x02, unsafe.Sizeof(uffdioRange{}))},
		{"COPY", ioctlCopy, ioc(rw, 0x03, unsafe.Sizeof(uffdioCopy{}))},
		{"ZEROPAGE", ioctlZeropage, ioc(rw, 0x04, unsafe.Sizeof(uffdioZeropage{}))},
		{"CONTINUE", ioctlContinue, ioc(rw, 0x07, unsafe.Sizeof(uffdioContinue{}))},
		{"IOC_NEW", ioctlDevNew, 0xAA00},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
	if unsafe.Sizeof(Msg{}) != 32 {
		t.Errorf("uffd_msg is %d bytes, want 32", unsafe.Sizeof(Msg{}))
	}
}

func TestMsgDecode(t *testing.T) {
	m := NewPagefaultMsg(0x7f0000001000, PagefaultWrite)
	if m.Event() != EventPagefault {
		t.Fatalf("event %v", m.Event())
	}
	if f, a, _ := m.Pagefault(); f != PagefaultWrite || a != 0x7f0000001000 {
		t.Fatalf("pagefault flags %#x addr %#x", f, a)
	}
	r := NewRemoveMsg(0x1000, 0x5000)
	if s, e := r.Remove(); r.Event() != EventRemove || s != 0x1000 || e != 0x5000 {
		t.Fatalf("remove %v [%#x,%#x)", r.Event(), s, e)
	}
	if got := Features(FeatureEventRemove | FeatureMissingShmem).String(); got != "event_remove,missing_shmem" {
		t.Fatalf("features %q", got)
	}
}

func TestProbe(t *testing.T) {
	requireUFFD(t)
	s := Probe()
	if !s.Features.Has(FeatureEventRemove) {
		t.Fatalf("kernel offers %s, missing event_remove (Firecracker needs it)", s.Features)
	}
	if !s.Ioctls.Has(IoctlRegister | IoctlUnregister | IoctlAPI) {
		t.Fatalf("ioctls %#x", s.Ioctls)
	}
	t.Logf("syscall: %v, device: %v, features: %s", s.SyscallErr, s.DeviceErr, s.Features)
}

// region is anonymous memory of this process registered with a new uffd.
// Tests never touch its missing pages from Go code (a goroutine blocked in
// a userfault cannot be stopped for GC); faults are raised inside system
// calls instead, where the runtime does not wait for them.
type region struct {
	u    *Userfaultfd
	mem  []byte
	base uint64
}

func newRegion(t *testing.T, pages int, flags OpenFlag, features Features) *region {
	t.Helper()
	u, err := Open(NonBlocking | flags)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	if _, err := u.API(features); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(-1, 0, pages*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	base := uint64(uintptr(unsafe.Pointer(&mem[0])))
	ioctls, err := u.Register(base, uint64(len(mem)), RegisterMissing)
	if err != nil {
		t.Fatal(err)
	}
	if !ioctls.Has(IoctlCopy | IoctlZeropage | IoctlWake) {
		t.Fatalf("range ioctls %#x", ioctls)
	}
	return &region{u: u, mem: mem, base: base}
}

func page(b byte) []byte {
	p := make([]byte, 4096)
	for i := range p {
		p[i] = b + byte(i)
	}
	return p
}

func TestCopyZeropageUnregister(t *testing.T) {
	requireUFFD(t)
	r := newRegion(t, 4, 0, 0)
	want := page(7)
	if n, err := r.u.Copy(r.base, want, 0); n != 4096 || err != nil {
		t.Fatalf("copy = %d, %v", n, err)
	}
	if string(r.mem[:4096]) != string(want) { // present now: no fault
		t.Fatal("copied page differs")
	}
	if n, err := r.u.Copy(r.base, want, 0); n != 0 || err != unix.EEXIST {
		t.Fatalf("second copy = %d, %v; want EEXIST", n, err)
	}
	// Two pages where the second exists: partial progress, then EEXIST.
	if _, err := r.u.Zeropage(r.base+2*4096, 4096, 0); err != nil {
		t.Fatal(err)
	}
	n, err := r.u.Copy(r.base+4096, append(page(1), page(2)...), 0)
	if n != 4096 || err != unix.EAGAIN {
		t.Fatalf("partial copy = %d, %v; want 4096, EAGAIN", n, err)
	}
	for i, b := range r.mem[2*4096 : 3*4096] {
		if b != 0 {
			t.Fatalf("zero page byte %d = %d", i, b)
		}
	}
	if err := r.u.Wake(r.base, 4096); err != nil {
		t.Fatal(err)
	}
	if err := r.u.Unregister(r.base, uint64(len(r.mem))); err != nil {
		t.Fatal(err)
	}
	if r.mem[3*4096] != 0 { // unregistered: an ordinary anonymous fault
		t.Fatal("unregistered page not zero")
	}
}

// TestFaultMessage raises a fault in the kernel (write(2) reads the
// registered page) and serves it.
func TestFaultMessage(t *testing.T) {
	requireUFFD(t)
	r := newRegion(t, 2, 0, 0)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	done := make(chan error, 1)
	go func() {
		_, err := unix.Write(p[1], r.mem[4096:4096+64])
		done <- err
	}()
	msg := readMsg(t, r.u)
	if msg.Event() != EventPagefault {
		t.Fatalf("got %s", msg.String())
	}
	if _, addr, _ := msg.Pagefault(); addr != r.base+4096 {
		t.Fatalf("fault at %#x, want %#x", addr, r.base+4096)
	}
	want := page(42)
	if _, err := r.u.Copy(r.base+4096, want, 0); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 64)
	if _, err := unix.Read(p[0], got); err != nil || string(got) != string(want[:64]) {
		t.Fatalf("pipe read %v: %x", err, got[:8])
	}
}

// TestRemoveEvent: madvise(MADV_DONTNEED) waits until the REMOVE message
// is read; while it is queued, UFFDIO_COPY answers EAGAIN.
func TestRemoveEvent(t *testing.T) {
	requireUFFD(t)
	r := newRegion(t, 4, 0, FeatureEventRemove)
	done := make(chan error, 1)
	go func() { done <- unix.Madvise(r.mem[4096:3*4096], unix.MADV_DONTNEED) }()
	waitReadable(t, r.u)
	if _, err := r.u.Copy(r.base, page(1), 0); err != unix.EAGAIN {
		t.Fatalf("copy with a queued REMOVE = %v, want EAGAIN", err)
	}
	msg := readMsg(t, r.u)
	if start, end := msg.Remove(); msg.Event() != EventRemove || start != r.base+4096 || end != r.base+3*4096 {
		t.Fatalf("got %s", msg.String())
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestUserModeOnly: with UFFD_USER_MODE_ONLY a fault taken in the kernel
// is not reported; the system call fails with EFAULT instead.
func TestUserModeOnly(t *testing.T) {
	requireUFFD(t)
	r := newRegion(t, 1, UserModeOnly, 0)
	f, err := os.Create(t.TempDir() + "/out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := unix.Write(int(f.Fd()), r.mem[:16]); !errors.Is(err, unix.EFAULT) {
		t.Fatalf("write from an unreported range = %v, want EFAULT", err)
	}
}

func waitReadable(t *testing.T, u *Userfaultfd) {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(u.FD()), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int((10 * time.Second).Milliseconds()))
	if err != nil || n != 1 {
		t.Fatalf("uffd not readable: %d, %v", n, err)
	}
}

func readMsg(t *testing.T, u *Userfaultfd) Msg {
	t.Helper()
	waitReadable(t, u)
	msgs := make([]Msg, 4)
	n, err := u.Read(msgs)
	if err != nil || n != 1 {
		t.Fatalf("read %d messages: %v", n, err)
	}
	return msgs[0]
}

func TestOpenPaths(t *testing.T) {
	requireUFFD(t)
	s := Probe()
	for _, tc := range []struct {
		name string
		flag OpenFlag
		err  error
	}{{"syscall", ViaSyscall, s.SyscallErr}, {"device", ViaDevice, s.DeviceErr}} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err != nil {
				t.Skipf("%s path unavailable here: %v", tc.name, tc.err)
			}
			u, err := Open(tc.flag)
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			if !IsUserfaultfd(u.FD()) {
				t.Fatal("not recognised as a userfaultfd")
			}
			if _, err := u.API(FeatureEventRemove); err != nil {
				t.Fatal(err)
			}
			if _, err := u.API(0); err == nil {
				t.Fatal("second UFFDIO_API succeeded")
			}
		})
	}
}
