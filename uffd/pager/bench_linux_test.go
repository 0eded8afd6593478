//go:build linux

package pager

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/uffd"
	"github.com/zygote/zygote/uffd/internal/harness"
	"github.com/zygote/zygote/uffd/pagerapi"
)

// BenchmarkPager measures the pager against baselines in the same run and
// prints a table of figures and ratios. Run it once:
//
//	go test ./uffd/pager -run '^$' -bench Pager -benchtime 1x -v
//
// Each sub-benchmark does its work once whatever b.N is.
func BenchmarkPager(b *testing.B) {
	requireUFFD(b)
	warmHostMemory(b, 6<<30)
	var rows []string
	row := func(format string, args ...any) { rows = append(rows, fmt.Sprintf(format, args...)) }
	b.Run("fault", func(b *testing.B) { benchFault(b, row) })
	b.Run("populate", func(b *testing.B) { benchPopulate(b, row) })
	b.Run("shared-cache", func(b *testing.B) { benchSharedCache(b, row) })
	b.Run("prefetch", func(b *testing.B) { benchPrefetch(b, row) })
	fmt.Printf("\n%s\n%s\n\n", "pager benchmark (one run; ratios within this run)", strings.Join(rows, "\n"))
}

// warmHostMemory touches and frees size bytes. Where this machine is itself
// a VM, the first touch of guest RAM it never used faults in the hypervisor
// and costs several times an ordinary page fault; warming first makes the
// figures compare the pager with its baselines, not with the host.
func warmHostMemory(b *testing.B, size int) {
	m, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		b.Logf("warm-up skipped: %v", err)
		return
	}
	unix.Munmap(m)
}

func benchHarness(b *testing.B, sess pagerapi.Session, h harness.Config) harness.Result {
	b.Helper()
	h.NoVerify = true
	p := startHarness(b, sess, h)
	res, err := p.Result(ctxFor(b, 5*time.Minute))
	if err != nil {
		b.Fatal(err)
	}
	return res
}

func us(ns int64) float64 { return float64(ns) / 1e3 }

// benchFault: 4 KiB faults one at a time (page-only sessions, one thread,
// random order) against a minimal handler that answers each fault with one
// UFFDIO_COPY from memory.
func benchFault(b *testing.B, row func(string, ...any)) {
	const size, touches = 64 << 20, 8192
	mem := newMemFile(b, size, 21)
	pages := make([]int64, touches)
	for i, p := range rand.New(rand.NewSource(1)).Perm(size / 4096)[:touches] {
		pages[i] = int64(p) * 4096
	}
	h := harness.Config{Threads: 1, Order: "seq", Pages: pages}

	minimal := runMinimalHandler(b, mem, h)
	s := newServer(b, Config{})
	cold := benchHarness(b, createSession(b, s, pagerapi.CreateSessionRequest{ID: "cold", MemoryPath: mem, CacheKey: "f", PageOnly: true, NoRecord: true}), h)
	warm := benchHarness(b, createSession(b, s, pagerapi.CreateSessionRequest{ID: "warm", MemoryPath: mem, CacheKey: "f", PageOnly: true, NoRecord: true}), h)
	around := benchHarness(b, createSession(b, newServer(b, Config{}), pagerapi.CreateSessionRequest{ID: "around", MemoryPath: mem, CacheKey: "f", NoRecord: true}), h)

	rate := func(r harness.Result) float64 { return float64(touches) / (float64(r.TouchWallNS) / 1e9) }
	b.ReportMetric(us(minimal.P50NS), "minimal-p50-µs")
	b.ReportMetric(us(warm.P50NS), "pager-p50-µs")
	b.ReportMetric(us(warm.P99NS), "pager-p99-µs")
	b.ReportMetric(rate(warm), "pager-faults/s")
	b.ReportMetric(float64(warm.P50NS)/float64(minimal.P50NS), "p50-ratio")
	row("4 KiB faults, %d random pages of %d MiB, 1 thread:", touches, size>>20)
	row("  %-38s p50 %7.1f µs  p99 %7.1f µs  %8.0f faults/s", "minimal handler (1 COPY per fault)", us(minimal.P50NS), us(minimal.P99NS), rate(minimal))
	row("  %-38s p50 %7.1f µs  p99 %7.1f µs  %8.0f faults/s  (p50 ×%.2f)", "pager, page-only, cache warm", us(warm.P50NS), us(warm.P99NS), rate(warm), float64(warm.P50NS)/float64(minimal.P50NS))
	row("  %-38s p50 %7.1f µs  p99 %7.1f µs  %8.0f faults/s  (p50 ×%.2f)", "pager, page-only, cache cold", us(cold.P50NS), us(cold.P99NS), rate(cold), float64(cold.P50NS)/float64(minimal.P50NS))
	row("  %-38s p50 %7.1f µs  p99 %7.1f µs  %8.0f touches/s", "pager, 2 MiB neighbourhood, cache cold", us(around.P50NS), us(around.P99NS), rate(around))
}

// runMinimalHandler serves the harness with the least a handler can do:
// the file preloaded in memory, one UFFDIO_COPY per fault message.
func runMinimalHandler(b *testing.B, memPath string, h harness.Config) harness.Result {
	src, err := os.ReadFile(memPath)
	if err != nil {
		b.Fatal(err)
	}
	sock := filepath.Join(b.TempDir(), "minimal.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- minimalHandler(ctx, ln, src) }()
	res := benchHarness(b, pagerapi.Session{SocketPath: sock, MemoryPath: memPath}, h)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return res
}

func minimalHandler(ctx context.Context, ln *net.UnixListener, src []byte) error {
	conn, err := ln.AcceptUnix()
	if err != nil {
		return err
	}
	defer conn.Close()
	hs, err := uffd.RecvHandshake(conn, int64(len(src)))
	if err != nil {
		return err
	}
	defer hs.UFFD.Close()
	m := hs.Mappings[0]
	pidfd, err := uffd.OpenPidfd(int(hs.Peer.Pid))
	if err != nil {
		return err
	}
	defer unix.Close(pidfd)
	pfd := []unix.PollFd{{Fd: int32(hs.UFFD.FD()), Events: unix.POLLIN}, {Fd: int32(pidfd), Events: unix.POLLIN}}
	msgs := make([]uffd.Msg, 16)
	for ctx.Err() == nil {
		if _, err := unix.Poll(pfd, -1); err != nil && err != unix.EINTR {
			return err
		}
		if pfd[1].Revents != 0 {
			return nil
		}
		for {
			n, err := hs.UFFD.Read(msgs)
			if err == unix.EAGAIN {
				break
			}
			if err != nil {
				return err
			}
			for i := range msgs[:n] {
				_, addr, _ := msgs[i].Pagefault()
				addr &^= 4095
				off := m.Offset + addr - m.BaseHostVirtAddr
				if _, err := hs.UFFD.Copy(addr, src[off:off+4096], 0); err == unix.EEXIST {
					hs.UFFD.Wake(addr, 4096)
				} else if err != nil && !uffd.IsPeerGone(err) {
					return err
				}
			}
		}
	}
	return nil
}

// benchPopulate: the pager's populate-all of 1 GiB against one UFFDIO_COPY
// of 1 GiB from memory and against a plain memcpy into fresh memory.
func benchPopulate(b *testing.B, row func(string, ...any)) {
	const size = 1 << 30
	mem := newMemFile(b, size, 22)
	src, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(src)
	f, err := os.Open(mem)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := f.ReadAt(src, 0); err != nil {
		b.Fatal(err)
	}
	f.Close()

	single := oneCopy(b, src)
	dst, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	copy(dst, src)
	memcpy := time.Since(t0)
	unix.Munmap(dst)

	s := newServer(b, Config{CacheBytes: size + DefaultChunkBytes})
	populate := func(id string) time.Duration {
		sess := createSession(b, s, pagerapi.CreateSessionRequest{ID: id, MemoryPath: mem, CacheKey: "p", PopulateAll: true, NoRecord: true})
		p := startHarness(b, sess, harness.Config{WaitGo: true})
		if _, err := p.Next(ctxFor(b, time.Minute), "ready"); err != nil {
			b.Fatal(err)
		}
		info := waitState(b, s, id, pagerapi.StateDetached)
		p.Kill()
		return time.Duration(info.Stats.PopulatedMS * float64(time.Millisecond))
	}
	cold, warm := populate("cold"), populate("warm")

	gbps := func(d time.Duration) float64 { return size / d.Seconds() / (1 << 30) }
	b.ReportMetric(gbps(single), "one-copy-GiB/s")
	b.ReportMetric(gbps(warm), "populate-warm-GiB/s")
	b.ReportMetric(gbps(cold), "populate-cold-GiB/s")
	row("populate 1 GiB:")
	row("  %-38s %7.0f ms  %5.2f GiB/s", "memcpy into fresh anonymous memory", ms(memcpy), gbps(memcpy))
	row("  %-38s %7.0f ms  %5.2f GiB/s", "one UFFDIO_COPY of 1 GiB", ms(single), gbps(single))
	row("  %-38s %7.0f ms  %5.2f GiB/s  (×%.2f of one copy)", "pager populate-all, cache cold", ms(cold), gbps(cold), gbps(cold)/gbps(single))
	row("  %-38s %7.0f ms  %5.2f GiB/s  (×%.2f of one copy)", "pager populate-all, cache warm", ms(warm), gbps(warm), gbps(warm)/gbps(single))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// oneCopy times a single UFFDIO_COPY of src into a registered range of this
// process (never touched from Go).
func oneCopy(b *testing.B, src []byte) time.Duration {
	u, err := uffd.Open(uffd.NonBlocking)
	if err != nil {
		b.Fatal(err)
	}
	defer u.Close()
	if _, err := u.API(0); err != nil {
		b.Fatal(err)
	}
	dst, err := unix.Mmap(-1, 0, len(src), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(dst)
	base := uint64(uintptr(unsafe.Pointer(&dst[0])))
	if _, err := u.Register(base, uint64(len(dst)), uffd.RegisterMissing); err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	var done uint64
	for done < uint64(len(src)) { // one ioctl unless the kernel stops early
		n, err := u.Copy(base+done, src[done:], 0)
		if err != nil && !errors.Is(err, unix.EAGAIN) {
			b.Fatal(err)
		}
		done += n
	}
	return time.Since(t0)
}

// dropFileCache makes the next reads of path come from the disk.
func dropFileCache(b *testing.B, path string) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	unix.Fdatasync(int(f.Fd()))
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatal(err)
	}
}

// benchSharedCache: a second session with the same key against the first.
func benchSharedCache(b *testing.B, row func(string, ...any)) {
	const size = 256 << 20
	mem := newMemFile(b, size, 23)
	h := harness.Config{Threads: 2, Order: "seq"}
	run := func(s *Server, id string) harness.Result {
		return benchHarness(b, createSession(b, s, pagerapi.CreateSessionRequest{ID: id, MemoryPath: mem, CacheKey: "s", NoRecord: true}), h)
	}
	s := newServer(b, Config{})
	dropFileCache(b, mem)
	diskFirst := run(s, "disk-first")
	diskSecond := run(s, "disk-second")
	s2 := newServer(b, Config{}) // host page cache now warm, pager cache empty
	warmFirst := run(s2, "first")
	warmSecond := run(s2, "second")
	wall := func(r harness.Result) float64 { return float64(r.TouchWallNS) / 1e6 }
	b.ReportMetric(wall(diskFirst)/wall(diskSecond), "speedup-from-disk")
	b.ReportMetric(wall(warmFirst)/wall(warmSecond), "speedup-host-cached")
	row("shared cache, touch all of %d MiB, 2 threads:", size>>20)
	row("  %-38s %7.1f ms → second session %7.1f ms  (×%.2f)", "file on disk (host cache dropped)", wall(diskFirst), wall(diskSecond), wall(diskFirst)/wall(diskSecond))
	row("  %-38s %7.1f ms → second session %7.1f ms  (×%.2f)", "file in host page cache", wall(warmFirst), wall(warmSecond), wall(warmFirst)/wall(warmSecond))
}

// benchPrefetch: touching a recorded working set with and without
// prefetch, after a pause such as a VMM spends loading device state.
func benchPrefetch(b *testing.B, row func(string, ...any)) {
	const (
		size   = 512 << 20
		chunks = 32
		pages  = 32 // per chunk
	)
	mem := newMemFile(b, size, 24)
	rng := rand.New(rand.NewSource(2))
	var ws []int64
	for _, c := range rng.Perm(size / DefaultChunkBytes)[:chunks] {
		for i := 0; i < pages; i++ {
			ws = append(ws, int64(c)*DefaultChunkBytes+rng.Int63n(DefaultChunkBytes/4096)*4096)
		}
	}
	state := b.TempDir()
	rec := newServer(b, Config{StateDir: state, RecordWindow: time.Minute})
	benchHarness(b, createSession(b, rec, pagerapi.CreateSessionRequest{ID: "record", MemoryPath: mem, CacheKey: "w"}),
		harness.Config{Threads: 1, Order: "seq", Pages: ws})
	waitState(b, rec, "record", pagerapi.StateExited)
	rec.Close()

	touch := func(noPrefetch bool, pauseMS int) (harness.Result, pagerapi.SessionStats) {
		s := newServer(b, Config{StateDir: state, SocketPath: filepath.Join(b.TempDir(), "p.sock")})
		sess := createSession(b, s, pagerapi.CreateSessionRequest{ID: "vm", MemoryPath: mem, CacheKey: "w", NoPrefetch: noPrefetch})
		res := benchHarness(b, sess, harness.Config{Threads: 1, Order: "random", Pages: ws, DelayMS: pauseMS})
		return res, waitState(b, s, "vm", pagerapi.StateExited).Stats
	}
	wall := func(r harness.Result) float64 { return float64(r.TouchWallNS) / 1e6 }
	row("recorded working set: %d pages in %d chunks of a %d MiB file (%d pages recorded: faults, not their neighbours):", len(ws), chunks, size>>20, chunks)
	for _, pause := range []int{30, 200} {
		without, wst := touch(true, pause)
		with, st := touch(false, pause)
		b.ReportMetric(wall(without)/wall(with), fmt.Sprintf("speedup-after-%dms", pause))
		row("  touched %3d ms after the handshake:", pause)
		row("    %-36s %7.2f ms  %4d faults", "without prefetch", wall(without), wst.Faults)
		row("    %-36s %7.2f ms  %4d faults  (×%.1f faster; working set placed %.0f ms after the handshake)",
			"with prefetch", wall(with), st.Faults, wall(without)/wall(with), st.WorkingSetMS)
	}
}
