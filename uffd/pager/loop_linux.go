//go:build linux

package pager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/uffd"
	"github.com/zygote/zygote/uffd/pagerapi"
)

// Page states, one byte per page of each region. Only the fault loop's
// goroutine reads or writes them.
const (
	pageMissing uint8 = iota // never placed: its content comes from the file
	pagePresent              // placed by this session (or found present: EEXIST)
	pageRemoved              // a REMOVE/UNMAP event took it: a later fault gets zeros
)

type region struct {
	pagerapi.Region
	pages uint64
	state []uint8
}

func (r *region) contains(addr uint64) bool {
	return addr >= r.BaseHostVirtAddr && addr < r.BaseHostVirtAddr+r.Size
}

func (r *region) addr(idx uint64) uint64   { return r.BaseHostVirtAddr + idx*r.PageSize }
func (r *region) fileOff(idx uint64) int64 { return int64(r.Offset + idx*r.PageSize) }

// pendingFault is a fault message not yet answered.
type pendingFault struct {
	r   *region
	idx uint64
	at  time.Time // when its message was read
}

type endReason int

const (
	endFailed endReason = iota
	endStopped
	endPeerExited
	endDetached
)

var (
	// errMapChanging is EAGAIN with nothing placed: a REMOVE/UNMAP event
	// is queued. Drain, then retry.
	errMapChanging = errors.New("mapping changing (EAGAIN)")
	// errPeerGone is ENOENT/ESRCH: the VMM or its mapping is gone.
	errPeerGone = errors.New("VMM address space gone")
)

// placeKind says why pages are placed, for the counters.
type placeKind int

const (
	kindFault placeKind = iota
	kindAround
	kindPrefetch
)

// faultLoop serves one VMM's userfaultfd. All of it runs on the session's
// goroutine, including prefetch: one thread issues every UFFDIO_COPY of a
// session, so a page that a REMOVE event took is never refilled behind the
// loop's back, and faults are always served before the next prefetch step.
type faultLoop struct {
	s        *session
	u        *uffd.Userfaultfd
	pidfd    int
	regions  []*region // sorted by address
	chunk    int64
	missing  uint64 // pages in pageMissing state
	pending  []pendingFault
	msgs     []uffd.Msg
	plan     prefetchPlan
	rec      *recorder
	populate bool   // populate-all still wanted (false after an unregister failure)
	staging  []byte // placePages' buffer for pages of uncached chunks
	started  time.Time
}

func newFaultLoop(s *session, hs uffd.Handshake) (*faultLoop, error) {
	fl := &faultLoop{
		s:        s,
		u:        hs.UFFD,
		pidfd:    -1,
		chunk:    s.srv.cache.ChunkBytes(),
		msgs:     make([]uffd.Msg, 128),
		populate: s.req.PopulateAll,
		started:  time.Now(),
	}
	for _, m := range hs.Mappings {
		ps := m.EffectivePageSize()
		if int64(ps) > fl.chunk {
			return nil, fmt.Errorf("region page size %d exceeds the cache chunk of %d bytes", ps, fl.chunk)
		}
		r := &region{
			Region: pagerapi.Region{BaseHostVirtAddr: m.BaseHostVirtAddr, Size: m.Size, Offset: m.Offset, PageSize: ps},
			pages:  m.Size / ps,
		}
		r.state = make([]uint8, r.pages)
		fl.missing += r.pages
		fl.regions = append(fl.regions, r)
	}
	sort.Slice(fl.regions, func(i, j int) bool { return fl.regions[i].BaseHostVirtAddr < fl.regions[j].BaseHostVirtAddr })
	// The loop drains the uffd until EAGAIN, so it must not block; the
	// flag lives on the shared open file, and the VMM never reads the uffd.
	if err := unix.SetNonblock(fl.u.FD(), true); err != nil {
		return nil, fmt.Errorf("set uffd non-blocking: %w", err)
	}
	pidfd, err := uffd.OpenPidfd(int(hs.Peer.Pid))
	if err != nil {
		return nil, err
	}
	fl.pidfd = pidfd
	fl.plan = s.srv.planPrefetch(s, fl)
	if !s.req.NoRecord && !s.srv.ws.Exists(s.req.CacheKey) {
		fl.rec = &recorder{until: fl.started.Add(s.srv.cfg.RecordWindow)}
	}
	return fl, nil
}

func (fl *faultLoop) close() {
	fl.stopRecording()
	if fl.staging != nil {
		unix.Munmap(fl.staging)
	}
	fl.u.Close()
	if fl.pidfd >= 0 {
		unix.Close(fl.pidfd)
	}
}

// run polls the uffd, the VMM's pidfd and the stop eventfd. Each wakeup
// drains every queued message, applies REMOVE events, then serves the
// faults: each faulting page first, then the neighbourhoods. When no fault
// waits it takes one prefetch step.
func (fl *faultLoop) run(ctx context.Context) (endReason, error) {
	pfd := []unix.PollFd{
		{Fd: int32(fl.u.FD()), Events: unix.POLLIN},
		{Fd: int32(fl.pidfd), Events: unix.POLLIN},
		{Fd: int32(fl.s.stopFD), Events: unix.POLLIN},
	}
	for {
		timeout := -1
		switch {
		case fl.plan.active():
			timeout = 0
		case len(fl.pending) > 0:
			timeout = 1 // ms: EAGAIN clears once the VMM's madvise/munmap finishes
		case fl.rec != nil:
			timeout = max(0, int(time.Until(fl.rec.until).Milliseconds())+1)
		}
		for i := range pfd {
			pfd[i].Revents = 0
		}
		if _, err := unix.Poll(pfd, timeout); err != nil && err != unix.EINTR {
			return endFailed, fmt.Errorf("poll: %w", err)
		}
		if pfd[2].Revents != 0 || ctx.Err() != nil {
			return endStopped, nil
		}
		if pfd[1].Revents != 0 {
			return endPeerExited, nil
		}
		if pfd[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
			return endFailed, errors.New("userfaultfd reports POLLERR: the VMM did not complete UFFDIO_API")
		}
		faults, err := fl.drain()
		if err != nil {
			return endFailed, err
		}
		faults = append(fl.pending, faults...)
		fl.pending = nil
		if err := fl.serve(ctx, faults); err != nil {
			return fl.fatal(err)
		}
		if fl.rec != nil && (time.Now().After(fl.rec.until) || len(fl.rec.offs) >= maxWorkingSet) {
			fl.stopRecording()
		}
		if len(fl.pending) == 0 && fl.plan.active() {
			if err := fl.prefetchStep(ctx); err != nil {
				return fl.fatal(err)
			}
		}
		if fl.populate && !fl.plan.active() && fl.missing == 0 && len(fl.pending) == 0 {
			if err := fl.detach(); err != nil {
				if errors.Is(err, errPeerGone) {
					return endPeerExited, nil
				}
				// Keep serving: the ranges are still registered.
				fl.s.log.Warn("unregister failed; the session keeps serving", "err", err)
				fl.populate = false
				continue
			}
			return endDetached, nil
		}
	}
}

func (fl *faultLoop) fatal(err error) (endReason, error) {
	if errors.Is(err, errPeerGone) {
		return endPeerExited, nil
	}
	if errors.Is(err, context.Canceled) {
		return endStopped, nil
	}
	return endFailed, err
}

// drain reads every queued message. REMOVE/UNMAP events are applied at
// once, so the faults that follow see the removed pages; faults are
// returned for serve.
func (fl *faultLoop) drain() ([]pendingFault, error) {
	var faults []pendingFault
	for {
		n, err := fl.u.Read(fl.msgs)
		if err == unix.EAGAIN {
			return faults, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read userfaultfd: %w", err)
		}
		now := time.Now()
		for i := range fl.msgs[:n] {
			m := &fl.msgs[i]
			switch m.Event() {
			case uffd.EventPagefault:
				_, addr, _ := m.Pagefault()
				r := fl.lookup(addr)
				if r == nil {
					return nil, fmt.Errorf("fault at %#x outside the handshake's regions", addr)
				}
				faults = append(faults, pendingFault{r: r, idx: (addr - r.BaseHostVirtAddr) / r.PageSize, at: now})
			case uffd.EventRemove, uffd.EventUnmap:
				start, end := m.Remove()
				fl.remove(start, end)
				fl.s.add(cRemoveEvents, 1)
			case uffd.EventFork:
				unix.Close(m.ForkFD()) // never negotiated by Firecracker; do not leak it
				fl.s.log.Warn("ignored uffd fork event")
			default:
				fl.s.log.Warn("ignored uffd event", "msg", m.String())
			}
		}
	}
}

func (fl *faultLoop) lookup(addr uint64) *region {
	for _, r := range fl.regions {
		if r.contains(addr) {
			return r
		}
	}
	return nil
}

// remove marks the pages of [start, end) removed.
func (fl *faultLoop) remove(start, end uint64) {
	for _, r := range fl.regions {
		lo, hi := max(start, r.BaseHostVirtAddr), min(end, r.BaseHostVirtAddr+r.Size)
		if lo >= hi {
			continue
		}
		for i := (lo - r.BaseHostVirtAddr) / r.PageSize; i < (hi-r.BaseHostVirtAddr+r.PageSize-1)/r.PageSize; i++ {
			if r.state[i] == pageMissing {
				fl.missing--
			}
			r.state[i] = pageRemoved
		}
	}
}

// serve answers faults: every faulting page first (so every waiting vCPU
// resumes as early as possible), then the 2 MiB neighbourhood of each.
// While the recorded working set's pages are being streamed, a fault gets
// its page only: the guest is about to touch the recorded pages, not the
// neighbourhood, and loading a whole chunk would hold up both.
func (fl *faultLoop) serve(ctx context.Context, faults []pendingFault) error {
	if len(faults) == 0 {
		return nil
	}
	light := fl.plan.inRecordedPages()
	// The chunks of the faulting pages stay pinned for the neighbourhood pass.
	var around []*Chunk
	defer func() {
		for _, ch := range around {
			ch.Release()
		}
	}()
	seen := map[int64]bool{}
	for _, f := range faults {
		ch, err := fl.servePage(ctx, f, light)
		if errors.Is(err, errMapChanging) {
			fl.pending = append(fl.pending, f)
			fl.s.add(cRequeues, 1)
		} else if err == nil {
			fl.s.add(cFaults, 1)
			fl.s.srv.hist.observe(time.Since(f.at))
		}
		if ch != nil && (fl.s.req.PageOnly || seen[ch.Off]) {
			ch.Release()
		} else if ch != nil {
			seen[ch.Off] = true
			around = append(around, ch)
		}
		if err != nil && !errors.Is(err, errMapChanging) {
			return err
		}
	}
	for _, ch := range around {
		if err := fl.fillChunk(ctx, ch.Off, ch, kindAround); err != nil && !errors.Is(err, errMapChanging) {
			return err
		}
	}
	return nil
}

// servePage places the faulting page: zeros if it was removed, else the
// file's bytes through the cache. On a cache miss the faulting page is read
// and placed before the rest of its chunk is read. It returns the chunk,
// pinned, for the neighbourhood pass (nil for a zero page, on a cache
// error, or when light). light serves the page alone: from the cache if it
// holds the chunk, else read by itself into the staging buffer.
func (fl *faultLoop) servePage(ctx context.Context, f pendingFault, light bool) (*Chunk, error) {
	r, idx := f.r, f.idx
	if r.state[idx] == pageRemoved {
		return nil, fl.zero(r, idx)
	}
	fo := r.fileOff(idx)
	if fl.rec != nil && r.state[idx] == pageMissing {
		fl.rec.offs = append(fl.rec.offs, fo)
	}
	chunkOff := fo / fl.chunk * fl.chunk
	pos := fo - chunkOff
	ps := int64(r.PageSize)
	if light {
		if ch, ok := fl.s.srv.cache.Peek(fl.s.req.CacheKey, chunkOff); ok {
			defer ch.Release()
			fl.s.add(cCacheHits, 1)
			return nil, fl.place(r, idx, ch.Bytes()[pos:pos+ps], kindFault)
		}
		stage, err := fl.stage()
		if err != nil {
			return nil, err
		}
		if err := fl.readAt(stage[pos:pos+ps], fo); err != nil {
			return nil, err
		}
		return nil, fl.place(r, idx, stage[pos:pos+ps], kindFault)
	}
	var (
		placedEarly bool
		earlyErr    error
	)
	ch, hit, err := fl.s.srv.cache.Acquire(ctx, fl.s.req.CacheKey, chunkOff, fl.chunkLen(chunkOff), func(buf []byte) error {
		if err := fl.readAt(buf[pos:pos+ps], fo); err != nil {
			return err
		}
		placedEarly, earlyErr = true, fl.place(r, idx, buf[pos:pos+ps], kindFault)
		if err := fl.readAt(buf[:pos], chunkOff); err != nil {
			return err
		}
		return fl.readAt(buf[pos+ps:], fo+ps)
	})
	fl.countLookup(hit, err)
	if err != nil {
		return nil, err
	}
	if placedEarly {
		return ch, earlyErr
	}
	return ch, fl.place(r, idx, ch.Bytes()[pos:pos+ps], kindFault)
}

func (fl *faultLoop) countLookup(hit bool, err error) {
	switch {
	case err != nil:
	case hit:
		fl.s.add(cCacheHits, 1)
	default:
		fl.s.add(cCacheMisses, 1)
	}
}

func (fl *faultLoop) zero(r *region, idx uint64) error {
	_, err := fl.u.Zeropage(r.addr(idx), r.PageSize, 0)
	switch {
	case err == nil:
		r.state[idx] = pagePresent
		fl.s.add(cZeroPages, 1)
		return nil
	case err == unix.EEXIST:
		r.state[idx] = pagePresent
		fl.s.add(cExists, 1)
		return fl.wake(r, idx)
	}
	return classify(err)
}

func (fl *faultLoop) wake(r *region, idx uint64) error {
	if err := fl.u.Wake(r.addr(idx), r.PageSize); err != nil {
		return classify(err)
	}
	return nil
}

// classify maps an ioctl failure to the loop's two recoverable cases.
func classify(err error) error {
	switch {
	case errors.Is(err, unix.EAGAIN):
		return errMapChanging
	case uffd.IsPeerGone(err):
		return fmt.Errorf("%w: %w", errPeerGone, err)
	}
	return fmt.Errorf("userfaultfd ioctl: %w", err)
}

// place copies src to the consecutive pages of r from idx with
// UFFDIO_COPY, marking them present. It steps over pages that turn out to
// exist (EEXIST; for the faulting page it then wakes the waiters), and
// reports errMapChanging when the kernel refuses with nothing placed.
func (fl *faultLoop) place(r *region, idx uint64, src []byte, kind placeKind) error {
	ps := r.PageSize
	for len(src) > 0 {
		n, err := fl.u.Copy(r.addr(idx), src, 0)
		done := n / ps
		for i := idx; i < idx+done; i++ {
			if r.state[i] == pageMissing {
				fl.missing--
			}
			r.state[i] = pagePresent
		}
		fl.s.add(cBytesCopied, n)
		fl.s.add([...]counter{cFaultPages, cAroundPages, cPrefetchPages}[kind], done)
		idx, src = idx+done, src[n:]
		switch {
		case err == nil:
		case err == unix.EAGAIN && n > 0:
			// Partial: the next page may exist; the retry says.
		case err == unix.EEXIST:
			if r.state[idx] == pageMissing {
				fl.missing--
			}
			r.state[idx] = pagePresent
			fl.s.add(cExists, 1)
			if kind == kindFault {
				if err := fl.wake(r, idx); err != nil {
					return err
				}
			}
			idx, src = idx+1, src[ps:]
		default:
			return classify(err)
		}
	}
	return nil
}

// fillChunk places every missing page of the regions inside the file chunk
// at off, in runs of consecutive missing pages. Removed and present pages
// are left alone. have, if not nil, is the chunk already pinned by the
// caller (who releases it); otherwise the chunk is acquired only if some
// page is missing.
func (fl *faultLoop) fillChunk(ctx context.Context, off int64, have *Chunk, kind placeKind) error {
	length := fl.chunkLen(off)
	if length <= 0 {
		return nil
	}
	ch := have
	defer func() {
		if ch != nil && ch != have {
			ch.Release()
		}
	}()
	for _, r := range fl.regions {
		lo, hi := max(off, int64(r.Offset)), min(off+length, int64(r.Offset+r.Size))
		if lo >= hi {
			continue
		}
		ps := int64(r.PageSize)
		first, last := uint64(lo-int64(r.Offset))/r.PageSize, uint64(hi-int64(r.Offset)+ps-1)/r.PageSize
		for i := first; i < last; {
			if r.state[i] != pageMissing {
				i++
				continue
			}
			j := i
			for j < last && r.state[j] == pageMissing {
				j++
			}
			if ch == nil {
				var (
					hit bool
					err error
				)
				ch, hit, err = fl.s.srv.cache.Acquire(ctx, fl.s.req.CacheKey, off, length, func(buf []byte) error {
					return fl.readAt(buf, off)
				})
				fl.countLookup(hit, err)
				if err != nil {
					return err
				}
			}
			from := r.fileOff(i) - off
			if err := fl.place(r, i, ch.Bytes()[from:from+int64(j-i)*ps], kind); err != nil {
				return err
			}
			i = j
		}
	}
	return nil
}

// chunkLen is the length of the file chunk at off (short at end of file).
func (fl *faultLoop) chunkLen(off int64) int64 { return min(fl.chunk, fl.s.fileSize-off) }

// readAt fills b from the memory file at off: pread into the pager's own
// buffer, never a mapping of the file.
func (fl *faultLoop) readAt(b []byte, off int64) error {
	if len(b) == 0 {
		return nil
	}
	n, err := fl.s.file.ReadAt(b, off)
	if err == io.EOF && n == len(b) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("read %s at %d: %w", fl.s.req.MemoryPath, off, err)
	}
	return nil
}

// prefetchStep takes one step of the plan.
func (fl *faultLoop) prefetchStep(ctx context.Context) error {
	st, ok := fl.plan.nextStep()
	if !ok {
		return nil
	}
	var err error
	if st.pages != nil {
		err = fl.placePages(ctx, st.off, st.pages)
	} else {
		err = fl.fillChunk(ctx, st.off, nil, kindPrefetch)
	}
	if errors.Is(err, errMapChanging) {
		fl.plan.unread()
		return nil
	}
	if err == nil && fl.plan.next == len(fl.plan.steps) && st.pages == nil && fl.plan.lastStep {
		took := sinceMS(fl.started)
		fl.s.mu.Lock()
		fl.s.workingMS = took
		fl.s.mu.Unlock()
		fl.s.log.Info("recorded working set placed", "pages", fl.plan.wsPages, "chunks", fl.plan.wsChunks, "ms", took)
	}
	if err == nil && !fl.plan.active() && fl.populate && fl.missing > 0 {
		fl.plan.rewind() // pages skipped by EAGAIN: another pass
	}
	return err
}

// placePages places the listed missing pages of the chunk at off (file
// offsets, ascending), coalescing consecutive pages into one copy. From the
// cache if it holds the chunk; otherwise the pages alone are read into the
// session's staging buffer, because loading whole chunks (fresh memory for
// each) would delay the working set by the chunks' size. The chunk step
// that follows in the plan loads the chunk into the cache.
func (fl *faultLoop) placePages(ctx context.Context, off int64, pages []int64) error {
	ch, cached := fl.s.srv.cache.Peek(fl.s.req.CacheKey, off)
	if cached {
		defer ch.Release()
		fl.s.add(cCacheHits, 1)
	}
	var (
		run      *region
		from, to uint64 // page indices [from, to) of run
	)
	flush := func() error {
		if run == nil || from == to {
			return nil
		}
		pos, n := run.fileOff(from)-off, int64((to-from)*run.PageSize)
		var src []byte
		if cached {
			src = ch.Bytes()[pos : pos+n]
		} else {
			stage, err := fl.stage()
			if err != nil {
				return err
			}
			src = stage[pos : pos+n]
			if err := fl.readAt(src, run.fileOff(from)); err != nil {
				return err
			}
		}
		return fl.place(run, from, src, kindPrefetch)
	}
	for _, fo := range pages {
		r := fl.regionAtFile(fo)
		if r == nil {
			continue
		}
		idx := uint64(fo-int64(r.Offset)) / r.PageSize
		if r.state[idx] != pageMissing {
			continue
		}
		if r == run && idx == to {
			to++
			continue
		}
		if err := flush(); err != nil {
			return err
		}
		run, from, to = r, idx, idx+1
	}
	return flush()
}

// stage returns the session's staging buffer (one chunk, allocated once).
func (fl *faultLoop) stage() ([]byte, error) {
	if fl.staging == nil {
		b, err := unix.Mmap(-1, 0, int(fl.chunk), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return nil, fmt.Errorf("staging buffer: %w", err)
		}
		fl.staging = b
	}
	return fl.staging, nil
}

func (fl *faultLoop) regionAtFile(fo int64) *region {
	for _, r := range fl.regions {
		if fo >= int64(r.Offset) && fo < int64(r.Offset+r.Size) {
			return r
		}
	}
	return nil
}

// detach unregisters every region once all pages are placed: the VMM's
// later faults (after a balloon REMOVE) are ordinary anonymous faults, and
// the VM no longer depends on the pager.
func (fl *faultLoop) detach() error {
	for _, r := range fl.regions {
		if err := fl.u.Unregister(r.BaseHostVirtAddr, r.Size); err != nil {
			return classify(err)
		}
	}
	return nil
}

func (fl *faultLoop) stopRecording() {
	if fl.rec == nil {
		return
	}
	if len(fl.rec.offs) > 0 {
		fl.s.srv.ws.SaveAsync(fl.s.req.CacheKey, fl.s.req.ID, fl.rec.offs)
	}
	fl.rec = nil
}

// recorder keeps the order of first faults during a restore.
type recorder struct {
	offs  []int64
	until time.Time
}
