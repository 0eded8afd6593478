// Package pager is the pager process (`zygote pager`): it serves the
// guest-memory page faults of lazily restored VMs over userfaultfd, with a
// page cache shared by every session whose memory has the same cache key.
//
// # Sessions
//
// The daemon creates a session {id, memory file, cache key} through the
// control API (package pagerapi; Server.Handler) and gets a socket path;
// it passes that to the VMM (Firecracker: mem_backend {backend_type: Uffd,
// backend_path}). A session's life:
//
//	waiting ──handshake──▶ serving ──VMM exits──▶ exited
//	   │                     │  └──populate-all done, ranges unregistered──▶ detached
//	   └─bad/late handshake──┴──unrecoverable loop error──▶ failed
//
// The socket accepts exactly one connection and is unlinked once a peer
// connects. The peer must send Firecracker's handshake (uffd.RecvHandshake);
// anything else fails the session with a message that says what was wrong,
// closes that connection, and leaves every other session alone. Ended
// sessions stay listed (TerminalTTL) so the daemon can read how they ended;
// CloseSession forgets a session and, if it still serves, stops it — which
// hangs its VM on the next missing page, so the daemon closes a session
// only after its VM stopped or detached.
//
// # The fault loop
//
// One goroutine per session polls the uffd, a pidfd of the VMM (from
// SO_PEERCRED: a VM's exit is invisible on the uffd) and a stop eventfd. On
// each wakeup it drains every queued message (with a REMOVE queued every
// ioctl fails with EAGAIN, so a one-message loop livelocks), marks REMOVE'd
// and UNMAP'd pages removed (a later fault there gets a zero page), then
// serves the faults: each faulting page first, then its 2 MiB-aligned
// neighbourhood (the cache chunk around it, clipped to the region). EEXIST
// is answered with WAKE; EAGAIN requeues the fault after the next drain;
// ENOENT/ESRCH or the pidfd mean the VMM is gone and close the session.
// When no fault waits, the loop takes one prefetch step. Because this one
// goroutine issues every UFFDIO_COPY of its session, a removed page is
// never refilled behind its back and faults always go first.
//
// # Cache (DESIGN invariant 5)
//
// Cache holds copies: chunks of bytes read with pread(2) from memory files
// into anonymous memory the pager owns, keyed by (cache key, chunk-aligned
// file offset). It never maps a file, so nobody's later write to a file can
// change what the cache serves. The cache key names content: equal keys
// must mean equal bytes, and the daemon changes the key whenever a file's
// content may change (a re-standby) — forks inherit it because their copy
// is byte-identical. A key seen with two file sizes is refused. Within the
// byte budget (CLOCK eviction over unpinned chunks) each chunk is read from
// disk once however many sessions want it. UFFDIO_COPY gives every VM its
// own copy of each page: the cache saves disk reads and page-cache copies,
// not RAM.
//
// # Working sets and prefetch
//
// The first session of a key records the order of its faulting pages for
// RecordWindow after the handshake and saves it under StateDir/workingsets.
// Later sessions of the key, right after the handshake, stream the recorded
// pages, then their chunks, then (populate-all) every chunk; then the
// ranges are unregistered and the session is detached: the VM no longer
// needs the pager.
//
// # Concurrency
//
// Lock order: Server.mu, then session.mu; Cache.mu is a leaf. No lock is
// held across an ioctl, a file read or a wait for a session. A session's
// page states belong to its loop goroutine alone; its counters are atomic.
// Goroutines: Serve owns the HTTP server; Server owns the session goroutines
// and the reaper (Close stops and waits for them); wsStore's saves are
// waited for by Close.
//
// # Never
//
// Never touch guest memory from Go code (a goroutine blocked in a userfault
// cannot stop for GC); never serve bytes that did not come from the
// session's own memory file or from a cache entry of the same key; never
// hold a live view (mmap) of a memory file.
package pager
