// Package harness is the VMM side of the pager's tests and benchmarks, as a
// real process: the test binary re-executed (TestMain calls Main first;
// Start launches it with its Config in the environment). It mmaps anonymous
// memory (one mapping per region), creates a userfaultfd (non-blocking,
// EVENT_REMOVE), registers the memory MISSING, does Firecracker's handshake
// with a session socket and keeps the socket open, then touches pages
// (sequential or random, several threads, reads or writes), checks every
// byte against the memory file, and can madvise(MADV_DONTNEED) ranges to
// produce REMOVE events. It reports line-delimited JSON events on stdout.
//
// It is test-only: a goroutine faulting on registered memory cannot be
// stopped for GC, so the harness disables GC and never serves faults itself.
package harness
