//go:build linux

package uffd

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The argument structures of the ioctls, laid out as in the kernel header.
type (
	uffdioRange struct{ start, len uint64 }
	uffdioAPI   struct{ api, features, ioctls uint64 }
	uffdioReg   struct {
		rng    uffdioRange
		mode   uint64
		ioctls uint64
	}
	uffdioCopy struct {
		dst, src, len, mode uint64
		copy                int64
	}
	uffdioZeropage struct {
		rng      uffdioRange
		mode     uint64
		zeropage int64
	}
	uffdioContinue struct {
		rng    uffdioRange
		mode   uint64
		mapped int64
	}
)

// OpenFlag selects how Open creates a userfaultfd.
type OpenFlag int

const (
	// NonBlocking sets O_NONBLOCK: Read returns unix.EAGAIN when no
	// message is queued. Firecracker creates its uffd this way.
	NonBlocking OpenFlag = 1 << iota
	// UserModeOnly sets UFFD_USER_MODE_ONLY: faults taken in kernel mode
	// (copy_to_user into the range) are not reported.
	UserModeOnly
	// ViaSyscall uses only the userfaultfd(2) system call.
	ViaSyscall
	// ViaDevice uses only /dev/userfaultfd + USERFAULTFD_IOC_NEW.
	ViaDevice
)

// Userfaultfd is one userfault file descriptor. Its methods are safe for
// concurrent use; Close must not race with them (the descriptor number could
// be reused), so the owner closes it after every user has stopped.
type Userfaultfd struct {
	fd        int
	closeOnce sync.Once
	closeErr  error
}

// Open creates a userfaultfd (close-on-exec). Without ViaSyscall or
// ViaDevice it tries the system call first and falls back to the device,
// which is what a host with vm.unprivileged_userfaultfd=0 but an ACL on
// /dev/userfaultfd needs. The caller then calls API exactly once.
func Open(flags OpenFlag) (*Userfaultfd, error) {
	kflags := unix.O_CLOEXEC
	if flags&NonBlocking != 0 {
		kflags |= unix.O_NONBLOCK
	}
	if flags&UserModeOnly != 0 {
		kflags |= userModeOnlyFlag
	}
	var errs []error
	if flags&ViaDevice == 0 {
		fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(kflags), 0, 0)
		if errno == 0 {
			return &Userfaultfd{fd: int(fd)}, nil
		}
		errs = append(errs, fmt.Errorf("userfaultfd(2): %w", errno))
	}
	if flags&ViaSyscall == 0 {
		fd, err := openDevice(kflags)
		if err == nil {
			return &Userfaultfd{fd: fd}, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("uffd: open: %w", errors.Join(errs...))
}

func openDevice(kflags int) (int, error) {
	dev, err := unix.Open(devUserfaultfd, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", devUserfaultfd, err)
	}
	defer unix.Close(dev)
	fd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), ioctlDevNew, uintptr(kflags))
	if errno != 0 {
		return -1, fmt.Errorf("%s USERFAULTFD_IOC_NEW: %w", devUserfaultfd, errno)
	}
	return int(fd), nil
}

// FromFD wraps a userfaultfd received from another process (Firecracker's
// handshake). The Userfaultfd owns fd from now on.
func FromFD(fd int) *Userfaultfd { return &Userfaultfd{fd: fd} }

// FD is the descriptor number, for poll(2) and SCM_RIGHTS.
func (u *Userfaultfd) FD() int { return u.fd }

// Close closes the descriptor once; later calls return the first result.
func (u *Userfaultfd) Close() error {
	u.closeOnce.Do(func() { u.closeErr = unix.Close(u.fd) })
	return u.closeErr
}

func (u *Userfaultfd) ioctl(req uintptr, arg unsafe.Pointer) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(u.fd), req, uintptr(arg))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

// APIInfo is what UFFDIO_API reports: every feature the kernel supports
// and the ioctls allowed on the descriptor.
type APIInfo struct {
	Features Features
	Ioctls   Ioctls
}

// API performs the UFFDIO_API handshake asking for want. The kernel refuses
// (EINVAL) a feature it does not have; the result lists all it has.
func (u *Userfaultfd) API(want Features) (APIInfo, error) {
	a := uffdioAPI{api: apiVersion, features: uint64(want)}
	if err := u.ioctl(ioctlAPI, unsafe.Pointer(&a)); err != nil {
		return APIInfo{}, fmt.Errorf("uffd: UFFDIO_API features=%s: %w", want, err)
	}
	return APIInfo{Features: Features(a.features), Ioctls: Ioctls(a.ioctls)}, nil
}

// Register watches [start, start+length) of the owning process's memory
// in mode; it returns the ioctls the range supports.
func (u *Userfaultfd) Register(start, length uint64, mode RegisterMode) (Ioctls, error) {
	r := uffdioReg{rng: uffdioRange{start, length}, mode: uint64(mode)}
	if err := u.ioctl(ioctlRegister, unsafe.Pointer(&r)); err != nil {
		return 0, fmt.Errorf("uffd: UFFDIO_REGISTER [%#x,+%#x): %w", start, length, err)
	}
	return Ioctls(r.ioctls), nil
}

// Unregister stops watching the range and wakes every thread blocked in a
// fault inside it; later faults there are ordinary anonymous faults.
func (u *Userfaultfd) Unregister(start, length uint64) error {
	r := uffdioRange{start, length}
	if err := u.ioctl(ioctlUnregister, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("uffd: UFFDIO_UNREGISTER [%#x,+%#x): %w", start, length, err)
	}
	return nil
}

// Wake wakes the threads blocked on faults in the range (after a
// DontWake operation, or after EEXIST: the page is there but a faulting
// thread may still sleep).
func (u *Userfaultfd) Wake(start, length uint64) error {
	r := uffdioRange{start, length}
	if err := u.ioctl(ioctlWake, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("uffd: UFFDIO_WAKE [%#x,+%#x): %w", start, length, err)
	}
	return nil
}

// Copy atomically fills missing pages at dst (in the registered process)
// with src (in this process) and, unless CopyDontWake, wakes the faulting
// threads. It returns how many bytes it placed and the bare errno, so the
// caller can switch on it:
//
//	(len(src), nil)   everything copied
//	(n>0, EAGAIN)     partial: retry from dst+n (the next page may exist)
//	(0, EAGAIN)       the mapping is changing (a REMOVE/UNMAP event is queued): drain, then retry
//	(0, EEXIST)       the page at dst is already present: Wake it, skip it
//	(0, ENOENT|ESRCH) the target process or mapping is gone
//
// dst and len(src) must be multiples of the range's page size. src must
// stay mapped during the call; Copy keeps the slice alive.
func (u *Userfaultfd) Copy(dst uint64, src []byte, mode CopyMode) (uint64, error) {
	if len(src) == 0 {
		return 0, nil
	}
	c := uffdioCopy{dst: dst, src: uint64(uintptr(unsafe.Pointer(&src[0]))), len: uint64(len(src)), mode: uint64(mode)}
	err := u.ioctl(ioctlCopy, unsafe.Pointer(&c))
	runtime.KeepAlive(src)
	return progress(c.copy, err)
}

// Zeropage maps the shared zero page at the missing pages of the range;
// its results read like Copy's.
func (u *Userfaultfd) Zeropage(start, length uint64, mode ZeropageMode) (uint64, error) {
	z := uffdioZeropage{rng: uffdioRange{start, length}, mode: uint64(mode)}
	err := u.ioctl(ioctlZeropage, unsafe.Pointer(&z))
	return progress(z.zeropage, err)
}

// Continue resolves MINOR faults by mapping the page already present in
// the page cache of the backing shmem/hugetlbfs file; results read like
// Copy's.
func (u *Userfaultfd) Continue(start, length uint64, mode ContinueMode) (uint64, error) {
	c := uffdioContinue{rng: uffdioRange{start, length}, mode: uint64(mode)}
	err := u.ioctl(ioctlContinue, unsafe.Pointer(&c))
	return progress(c.mapped, err)
}

// progress turns the kernel's "bytes done or -errno" field plus the ioctl
// result into (bytes, errno).
func progress(done int64, err error) (uint64, error) {
	if done > 0 {
		return uint64(done), err
	}
	if err == nil && done < 0 {
		err = unix.Errno(-done)
	}
	return 0, err
}

// Read reads as many queued messages as fit in msgs. On a non-blocking
// descriptor with nothing queued it returns (0, unix.EAGAIN).
func (u *Userfaultfd) Read(msgs []Msg) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&msgs[0])), len(msgs)*msgSize)
	for {
		n, err := unix.Read(u.fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n%msgSize != 0 {
			return n / msgSize, fmt.Errorf("uffd: short read of %d bytes", n)
		}
		return n / msgSize, nil
	}
}

// IsUserfaultfd reports whether fd is a userfaultfd (its /proc link reads
// anon_inode:[userfaultfd]).
func IsUserfaultfd(fd int) bool {
	target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	return err == nil && target == "anon_inode:[userfaultfd]"
}

// Support is the result of Probe: which creation paths work on this host
// and what the kernel offers.
type Support struct {
	// SyscallErr is nil when userfaultfd(2) works for this process.
	SyscallErr error
	// DeviceErr is nil when /dev/userfaultfd works for this process.
	DeviceErr error
	// Features and Ioctls are what UFFDIO_API reported (zero when
	// neither path works).
	Features Features
	Ioctls   Ioctls
}

// Available reports whether some path can create a userfaultfd.
func (s Support) Available() bool { return s.SyscallErr == nil || s.DeviceErr == nil }

// Err explains why no path works, or returns nil.
func (s Support) Err() error {
	if s.Available() {
		return nil
	}
	return errors.Join(s.SyscallErr, s.DeviceErr)
}

// Probe detects userfaultfd support: it opens a descriptor each way and
// asks UFFDIO_API for the kernel's features, then closes everything.
func Probe() Support {
	var s Support
	for _, via := range []OpenFlag{ViaSyscall, ViaDevice} {
		u, err := Open(NonBlocking | via)
		if via == ViaSyscall {
			s.SyscallErr = err
		} else {
			s.DeviceErr = err
		}
		if err != nil {
			continue
		}
		if s.Features == 0 {
			if info, err := u.API(0); err == nil {
				s.Features, s.Ioctls = info.Features, info.Ioctls
			}
		}
		u.Close()
	}
	return s
}
