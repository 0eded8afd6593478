package qemu

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// confinement is what the daemon applies to a VMM before QEMU's own
// -sandbox takes over (confine.go explains the choices).
type confinement struct {
	// dropCaps empties the capability bounding set, so QEMU (uid 0) execs
	// with no capabilities at all.
	dropCaps bool
	// noHostHugePages turns QEMU's madvise(MADV_HUGEPAGE) on guest RAM into
	// a no-op with a seccomp filter.
	noHostHugePages bool
}

// start starts cmd with c applied. The credentials and the seccomp filter
// are per thread in Linux, so they are set on a fresh, locked OS thread
// that forks the VMM and then dies with its goroutine (a locked goroutine
// that returns takes its thread with it): the daemon's other threads keep
// their capabilities and run unfiltered.
func (c confinement) start(cmd *exec.Cmd) (dropped bool, err error) {
	if !c.dropCaps && !c.noHostHugePages {
		return false, cmd.Start()
	}
	type result struct {
		dropped bool
		err     error
	}
	done := make(chan result, 1)
	go func() { // owner: start, which waits for it
		runtime.LockOSThread() // never unlocked: the thread is tainted
		var r result
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			done <- result{err: fmt.Errorf("no_new_privs: %w", err)}
			return
		}
		if c.noHostHugePages {
			if err := installNoHugePageFilter(); err != nil {
				done <- result{err: err}
				return
			}
		}
		if c.dropCaps {
			r.dropped = true
			for cp := 0; cp <= unix.CAP_LAST_CAP; cp++ {
				err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(cp), 0, 0, 0)
				if errors.Is(err, unix.EPERM) {
					// Not root: the VMM gets this thread's (lack of)
					// privileges anyway.
					r.dropped = false
					break
				}
				if err != nil && !errors.Is(err, unix.EINVAL) { // EINVAL: the kernel does not know cp
					done <- result{err: fmt.Errorf("drop capability %d: %w", cp, err)}
					return
				}
			}
			unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
		}
		r.err = cmd.Start()
		done <- r
	}()
	r := <-done
	return r.dropped, r.err
}

// auditArch is the seccomp architecture of this build, 0 where the filter
// is not written for it.
func auditArch() uint32 {
	switch runtime.GOARCH {
	case "amd64":
		return unix.AUDIT_ARCH_X86_64
	case "arm64":
		return unix.AUDIT_ARCH_AARCH64
	}
	return 0
}

// installNoHugePageFilter makes madvise(…, MADV_HUGEPAGE) return 0 without
// doing anything, for this thread and what it execs.
func installNoHugePageFilter() error {
	arch := auditArch()
	if arch == 0 {
		return nil
	}
	const (
		ldAbs = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret   = unix.BPF_RET | unix.BPF_K
		// struct seccomp_data: nr at 0, arch at 4, args[i] at 16+8i (the
		// low half first on these little-endian architectures).
		offNr, offArch, offArg2 = 0, 4, 32
	)
	prog := []unix.SockFilter{
		{Code: ldAbs, K: offArch},
		{Code: jeq, K: arch, Jt: 0, Jf: 5},
		{Code: ldAbs, K: offNr},
		{Code: jeq, K: unix.SYS_MADVISE, Jt: 0, Jf: 3},
		{Code: ldAbs, K: offArg2},
		{Code: jeq, K: unix.MADV_HUGEPAGE, Jt: 0, Jf: 1},
		{Code: ret, K: unix.SECCOMP_RET_ERRNO | 0}, // "succeeds", does nothing
		{Code: ret, K: unix.SECCOMP_RET_ALLOW},
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&fprog)), 0, 0); err != nil {
		return fmt.Errorf("install the MADV_HUGEPAGE filter: %w", err)
	}
	runtime.KeepAlive(prog)
	return nil
}
