//go:build linux

package clone

// Benchmarks print figures; they are not run in CI (root, loop-mounted XFS,
// minutes of disk I/O). The commands are in README.md.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/internal/testutil"
)

var benchOpts = Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}

// writeMemoryLike writes a guest-RAM-like file: in every 4 MiB the first
// 2.5 MiB hold data and the rest is a hole (62.5 % data), like a VM that
// touched part of its memory.
func writeMemoryLike(b testing.TB, path string, size int64) {
	b.Helper()
	var segs []segment
	for block := int64(0); block < size; block += 4 << 20 {
		segs = append(segs, segment{block, min(block+(5<<19), size)})
	}
	writeSparse(b, path, size, segs, 1)
}

// fullSparseCopy is the fallback path forced on a reflink filesystem: what
// a fork costs on the same disk without reflink (holes skipped, data
// read and written, fsync).
func fullSparseCopy(ctx context.Context, src, dst string) error {
	var s, d unix.Stat_t
	if err := unix.Stat(src, &s); err != nil {
		return err
	}
	if err := unix.Stat(filepath.Dir(dst), &d); err != nil {
		return err
	}
	r := newRun(benchOpts)
	r.caps[devPair{s.Dev, d.Dev}] = &fsCaps{noReflink: true, noCopyFileRange: true}
	if err := r.cloneFile(ctx, src, dst); err != nil {
		return err
	}
	return r.syncAll()
}

// BenchmarkMemoryFileCopy: copy latency of a 256 MiB and a 2 GiB
// memory-like file, reflink against a full sparse copy, in one run, fsync
// included, page cache warm.
func BenchmarkMemoryFileCopy(b *testing.B) {
	xfs, ext4 := testutil.XFS(b), testutil.Ext4Dir(b)
	ctx := context.Background()
	type method struct {
		name string
		dir  string
		copy func(src, dst string) error
	}
	file := func(src, dst string) error { _, err := File(ctx, src, dst, benchOpts); return err }
	methods := []method{
		{"xfs reflink", xfs, file},
		{"xfs full sparse copy", xfs, func(src, dst string) error { return fullSparseCopy(ctx, src, dst) }},
		{"ext4 copy_file_range", ext4, file},
	}
	sizes := []int64{256 << 20, 2 << 30}
	results := map[string]time.Duration{}
	for _, size := range sizes {
		for _, m := range methods {
			src := filepath.Join(m.dir, fmt.Sprintf("memory-%d", size))
			if _, err := os.Stat(src); err != nil {
				writeMemoryLike(b, src, size)
			}
			name := fmt.Sprintf("%dMiB/%s", size>>20, strings.ReplaceAll(m.name, " ", "_"))
			b.Run(name, func(b *testing.B) {
				var total time.Duration
				for i := 0; i < b.N; i++ {
					dst := filepath.Join(m.dir, fmt.Sprintf("copy-%d", i))
					start := time.Now()
					if err := m.copy(src, dst); err != nil {
						b.Fatal(err)
					}
					total += time.Since(start)
					b.StopTimer()
					if err := os.Remove(dst); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				results[fmt.Sprintf("%d/%s", size, m.name)] = total / time.Duration(b.N)
			})
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-8s | %-22s | %12s | %s\n", "size", "method", "latency", "vs reflink")
	for _, size := range sizes {
		ref := results[fmt.Sprintf("%d/%s", size, methods[0].name)]
		for _, m := range methods {
			d := results[fmt.Sprintf("%d/%s", size, m.name)]
			if d == 0 {
				continue
			}
			fmt.Fprintf(&sb, "%-8s | %-22s | %12s | %.0f×\n", fmt.Sprintf("%d MiB", size>>20), m.name, d.Round(time.Microsecond), float64(d)/float64(ref))
		}
	}
	fmt.Print(sb.String())
}

// BenchmarkInstanceDir: Dir of an instance-like tree (256 MiB memory
// file, state, disk, logs) on XFS with and without fsync, to see what the
// durability costs on the reflink path.
func BenchmarkInstanceDir(b *testing.B) {
	root := testutil.XFS(b)
	src := filepath.Join(root, "src")
	if err := os.MkdirAll(filepath.Join(src, "disks"), 0o755); err != nil {
		b.Fatal(err)
	}
	writeMemoryLike(b, filepath.Join(src, "memory"), 256<<20)
	writeMemoryLike(b, filepath.Join(src, "disks", "rootfs.img"), 64<<20)
	for _, name := range []string{"state", "config.json", "console.log"} {
		if err := os.WriteFile(filepath.Join(src, name), make([]byte, 100<<10), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	for _, noSync := range []bool{false, true} {
		b.Run(fmt.Sprintf("nosync=%v", noSync), func(b *testing.B) {
			opts := benchOpts
			opts.NoSync = noSync
			for i := 0; i < b.N; i++ {
				dst := filepath.Join(root, fmt.Sprintf("dst-%d", i))
				if _, err := Dir(context.Background(), src, dst, opts); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := os.RemoveAll(dst); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// XFS's per-inode copy-on-write extent size hint, declared by hand.
const (
	fsIocFsgetxattr   = 0x801C581F // _IOR('X', 31, struct fsxattr)
	fsIocFssetxattr   = 0x401C5820 // _IOW('X', 32, struct fsxattr)
	fsXflagCowextsize = 0x00010000
)

type fsxattr struct {
	xflags, extsize, nextents, projid, cowextsize uint32
	pad                                           [8]byte
}

// setCowExtSize sets the XFS copy-on-write extent size hint of f.
func setCowExtSize(f *os.File, size uint32) error {
	var x fsxattr
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFsgetxattr, uintptr(unsafe.Pointer(&x))); e != 0 {
		return fmt.Errorf("FS_IOC_FSGETXATTR: %w", e)
	}
	x.xflags |= fsXflagCowextsize
	x.cowextsize = size
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFssetxattr, uintptr(unsafe.Pointer(&x))); e != 0 {
		return fmt.Errorf("FS_IOC_FSSETXATTR: %w", e)
	}
	return nil
}

// chainPolicy is one way of running the fork chain.
type chainPolicy struct {
	name string
	// prepare runs on each new generation's file before it is dirtied.
	prepare func(b *testing.B, path string)
	// afterDirty runs once the generation is dirtied and fsynced (its
	// "standby"); it may densify and reports the time it spent.
	afterDirty func(b *testing.B, path string) (densified bool, spent time.Duration)
}

type genResult struct {
	clone        time.Duration
	srcExtents   int
	densified    bool
	densifySpent time.Duration
}

// BenchmarkForkChain: a 20-generation chain of a 256 MiB memory-like file;
// each generation reflinks the previous one (File, fsync included), then
// dirties 5 % of its pages at random offsets in place and fsyncs. Policies:
// no fix, an XFS copy-on-write extent size hint of 2 MiB, and Densify when
// the file is Fragmented after its dirtying (off the fork's path).
func BenchmarkForkChain(b *testing.B) {
	const (
		size  = 256 << 20
		gens  = 20
		dirty = 0.05
	)
	policies := []chainPolicy{
		{name: "no fix"},
		{name: "cowextsize 2 MiB", prepare: func(b *testing.B, path string) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			if err := setCowExtSize(f, 2<<20); err != nil {
				b.Fatal(err)
			}
		}},
		{name: "densify when fragmented", afterDirty: func(b *testing.B, path string) (bool, time.Duration) {
			l, err := FileLayout(path)
			if err != nil {
				b.Fatal(err)
			}
			if !l.Fragmented() {
				return false, 0
			}
			ds, err := Densify(context.Background(), path, benchOpts)
			if err != nil {
				b.Fatal(err)
			}
			return true, ds.Duration
		}},
	}
	all := map[string][]genResult{}
	used := map[string]int64{}
	for _, p := range policies {
		b.Run(strings.ReplaceAll(p.name, " ", "_"), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				// Roomy, so that free space never runs short: XFS keeps
				// copy-on-write preallocations for minutes
				// (fs.xfs.speculative_prealloc_lifetime, 300 s), and a
				// nearly full filesystem cannot give Densify contiguous space.
				dir := testutil.MountLoop(b, testutil.LoopFS{Type: "xfs", Size: 64 << 30})
				all[p.name], used[p.name] = runChain(b, dir, p, size, gens, dirty)
			}
		})
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-24s | %-20s | %-20s | %8s | %10s | %-18s | %s\n",
		"policy", "gen 1 clone (extents)", "gen 20 clone (extents)", "20 vs 1", "worst", "densify: n, total", "disk used")
	for _, p := range policies {
		res := all[p.name]
		if len(res) != gens {
			continue
		}
		first, last := res[0], res[gens-1]
		var worst, spent time.Duration
		n := 0
		for _, g := range res {
			worst = max(worst, g.clone)
			spent += g.densifySpent
			if g.densified {
				n++
			}
		}
		fmt.Fprintf(&sb, "%-24s | %10s (%6d) | %10s (%6d) | %7.1f× | %10s | %2d, %13s | %d MiB\n", p.name,
			first.clone.Round(10*time.Microsecond), first.srcExtents, last.clone.Round(10*time.Microsecond), last.srcExtents,
			float64(last.clone)/float64(first.clone), worst.Round(time.Millisecond), n, spent.Round(time.Millisecond), used[p.name]>>20)
	}
	sb.WriteString("\nper generation: clone latency / source extents\n")
	for _, p := range policies {
		fmt.Fprintf(&sb, "%-24s:", p.name)
		for i, g := range all[p.name] {
			fmt.Fprintf(&sb, " %d:%s/%d", i+1, g.clone.Round(time.Millisecond), g.srcExtents)
		}
		sb.WriteString("\n")
	}
	fmt.Print(sb.String())
}

// runChain runs one chain in dir and returns per-generation results and
// the disk space the chain used.
func runChain(b *testing.B, dir string, p chainPolicy, size int64, gens int, dirty float64) ([]genResult, int64) {
	b.Helper()
	usedBefore := usedBytes(b, dir)
	prev := filepath.Join(dir, "gen00")
	writeMemoryLike(b, prev, size)
	if p.prepare != nil {
		p.prepare(b, prev)
	}
	rng := rand.New(rand.NewPCG(42, 42))
	pg := make([]byte, page)
	pages := size / page
	var out []genResult
	for g := 1; g <= gens; g++ {
		next := filepath.Join(dir, fmt.Sprintf("gen%02d", g))
		l, err := FileLayout(prev)
		if err != nil {
			b.Fatal(err)
		}
		res := genResult{clone: medianClone(b, prev, next), srcExtents: l.Extents}
		if p.prepare != nil {
			p.prepare(b, next)
		}
		f, err := os.OpenFile(next, os.O_WRONLY, 0)
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < int(float64(pages)*dirty); i++ {
			binary.LittleEndian.PutUint64(pg, rng.Uint64()|1)
			if _, err := f.WriteAt(pg, rng.Int64N(pages)*page); err != nil {
				b.Fatal(err)
			}
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		f.Close()
		if p.afterDirty != nil {
			res.densified, res.densifySpent = p.afterDirty(b, next)
		}
		out = append(out, res)
		prev = next
	}
	return out, usedBytes(b, dir) - usedBefore
}

// medianClone reflinks src to dst three times (File, fsync included: to
// two scratch names, then dst) and returns the median latency, so one slow
// fsync on a shared disk does not stand for a generation. The scratch
// copies are kept: deleting a 50 000-extent file makes XFS unmap it in the
// background, which would slow the next clone.
func medianClone(b *testing.B, src, dst string) time.Duration {
	b.Helper()
	var d [3]time.Duration
	for i := range d {
		to := dst
		if i < len(d)-1 {
			to = fmt.Sprintf("%s.scratch%d", dst, i)
		}
		st, err := File(context.Background(), src, to, benchOpts)
		if err != nil {
			b.Fatal(err)
		}
		d[i] = st.Duration
	}
	slices.Sort(d[:])
	return d[1]
}

// usedBytes is the space used on the XFS mounted at dir, measured after a
// remount: XFS keeps copy-on-write preallocations of cached inodes for
// minutes (fs.xfs.speculative_prealloc_lifetime), and only evicting the
// inodes shows the space the files really own.
func usedBytes(b testing.TB, dir string) int64 {
	b.Helper()
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		b.Fatal(err)
	}
	dev := ""
	for _, line := range strings.Split(string(mounts), "\n") {
		pre, post, _ := strings.Cut(line, " - ")
		if f, p := strings.Fields(pre), strings.Fields(post); len(f) > 4 && len(p) > 1 && f[4] == dir {
			dev = p[1]
		}
	}
	if dev == "" {
		b.Fatalf("%s is not a mount point", dir)
	}
	if err := unix.Unmount(dir, 0); err != nil {
		b.Fatalf("remount %s: %v", dir, err)
	}
	if err := unix.Mount(dev, dir, "xfs", 0, ""); err != nil {
		b.Fatalf("remount %s: %v", dir, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		b.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}
