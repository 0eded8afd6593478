// Package uffd is zygote's userfaultfd layer: bindings written on
// golang.org/x/sys/unix (which has only SYS_USERFAULTFD), feature
// detection, and Firecracker's UFFD handshake. The pager built on it lives
// in uffd/pager, the daemon's client and supervisor in uffd/pagerclient.
//
// # Bindings
//
// Open creates a userfaultfd (the system call, falling back to
// /dev/userfaultfd + USERFAULTFD_IOC_NEW); API negotiates features once;
// Register/Unregister arm and disarm ranges; Copy, Zeropage and Continue
// resolve faults; Wake wakes waiters; Read drains the 32-byte uffd_msg
// records (Msg). Probe reports which creation paths work and what the kernel
// offers. The ioctls return the bare errno so callers can switch on it:
//
//   - EEXIST from Copy/Zeropage is normal (duplicate fault messages): Wake
//     the page and move on.
//   - EAGAIN with nothing placed means a REMOVE/UNMAP event is queued: every
//     ioctl fails so until the queue is drained. Drain completely on each
//     wakeup; a loop that reads one message at a time livelocks.
//   - ENOENT/ESRCH (IsPeerGone) mean the registered process is gone.
//
// # Handshake
//
// A VMM (Firecracker) creates the uffd (non-blocking, EVENT_REMOVE),
// registers guest memory MISSING, connects to a unix socket and sends one
// message: a JSON array of Mapping {base_host_virt_addr, size, offset,
// page_size} — older versions send page_size_kib, which holds bytes — with
// the uffd as the one SCM_RIGHTS descriptor, then keeps the socket open.
// RecvHandshake reads and validates exactly that, returning errors that wrap
// errdefs.ErrInvalidArgument and say what is wrong; SendHandshake plays the
// VMM's side. The VMM's exit is invisible on the uffd: PeerCred
// (SO_PEERCRED) and OpenPidfd give a descriptor to poll beside it.
//
// # What callers must never do
//
// Never touch registered memory from Go code in a process that also serves
// its faults: a goroutine blocked in a userfault cannot be preempted, a
// stop-the-world then waits for it forever, and the server goroutine is
// stopped too. Faults are served by copying from the server's own buffers
// into the registered range with Copy; tests that need a fault in-process
// raise it inside a system call (write(2) from the range), where the
// runtime does not wait for it.
//
// Close a Userfaultfd only after every goroutine using it has stopped: the
// descriptor number could be reused.
package uffd
