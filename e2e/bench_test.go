package e2e

// Benchmarks with real VMs. They print tables; they run only with -bench,
// never in CI:
//
//	go test ./e2e -run '^$' -bench . -benchtime 1x -timeout 60m
//
// Each benchmark boots its own VMs on its own XFS and compares within one
// run (this machine is shared and noisy).

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/internal/testutil"
)

// benchDaemon starts a daemon on a fresh XFS for a benchmark. The
// benchmark's *testing.B stands in for the harness's *testing.T.
func benchDaemon(b *testing.B) *daemon {
	d := newDaemon(b, testutil.XFS(b))
	d.start()
	return d
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func table(title string, rows [][]string) {
	fmt.Printf("\n%s\n", title)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func timed(f func() error) (time.Duration, error) {
	begin := time.Now()
	err := f()
	return time.Since(begin), err
}

// BenchmarkBootAndExec: cold boot to agent-ready, and an exec round trip
// (`true`), median of 5.
func BenchmarkBootAndExec(b *testing.B) {
	d := benchDaemon(b)
	for i := 0; i < b.N; i++ {
		var boots, execs []time.Duration
		for j := 0; j < 5; j++ {
			name := fmt.Sprintf("boot-%d", j)
			dt, err := timed(func() error {
				if _, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: name}); err != nil {
					return err
				}
				_, err := d.c.WaitForState(ctx, name, "Running", 3*time.Minute)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			boots = append(boots, dt)
			for k := 0; k < 5; k++ {
				dt, err := timed(func() error {
					_, err := d.c.Exec(ctx, name, client.ExecOptions{Command: []string{"true"}})
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
				execs = append(execs, dt)
			}
			d.c.DeleteInstance(ctx, name, true)
		}
		b.ReportMetric(median(boots).Seconds(), "boot-s")
		b.ReportMetric(float64(median(execs).Microseconds())/1000, "exec-ms")
		table("boot and exec (median of 5 boots, 25 execs), 256 MiB, 1 vCPU", [][]string{
			{"what", "median", "min", "max"},
			{"create → agent ready", ms(median(boots)), ms(minOf(boots)), ms(maxOf(boots))},
			{"exec `true` round trip", ms(median(execs)), ms(minOf(execs)), ms(maxOf(execs))},
		})
	}
}

func minOf(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = min(m, d)
	}
	return m
}

func maxOf(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// loopWritten returns bytes written to the block device under dir so far
// (sectors written × 512, from /sys/block/<dev>/stat).
func loopWritten(b testing.TB, dir string) int64 {
	out, err := exec.Command("findmnt", "-n", "-o", "SOURCE", "--target", dir).Output()
	if err != nil {
		b.Fatal(err)
	}
	dev := filepath.Base(strings.TrimSpace(string(out)))
	raw, err := os.ReadFile("/sys/block/" + dev + "/stat")
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(raw))
	sectors, _ := strconv.ParseInt(f[6], 10, 64)
	return sectors * 512
}

// BenchmarkStandbyRestore: standby and restore latency for 256 MiB and
// 2 GiB guests (memory is not copied: the ratio should be near 1), restore
// vs cold boot, and a re-standby after dirtying 1 %, 10 % and 50 % of RAM:
// time and bytes written (only the dirtied pages, in place).
func BenchmarkStandbyRestore(b *testing.B) {
	d := benchDaemon(b)
	for i := 0; i < b.N; i++ {
		rows := [][]string{{"guest", "standby", "restore", "cold boot", "restore / boot", "state file"}}
		dirtyRows := [][]string{{"guest", "dirtied", "re-standby", "bytes written", "written / dirtied"}}
		for _, mib := range []int{256, 2048} {
			name := fmt.Sprintf("g%d", mib)
			var boot time.Duration
			boot, err := timed(func() error {
				if _, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: name, Size: fmt.Sprintf("%dMB", mib)}); err != nil {
					return err
				}
				_, err := d.c.WaitForState(ctx, name, "Running", 3*time.Minute)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			// Let the guest touch a realistic working set first.
			d.sh(name, "mount -o remount,size=90% /dev/shm; dd if=/dev/zero of=/dev/shm/warm bs=1M count=32 2>/dev/null; rm /dev/shm/warm")
			var sb, rs []time.Duration
			for k := 0; k < 5; k++ {
				dt, err := timed(func() error { _, err := d.c.StandbyInstance(ctx, name); return err })
				if err != nil {
					b.Fatal(err)
				}
				sb = append(sb, dt)
				dt, err = timed(func() error { _, err := d.c.RestoreInstance(ctx, name); return err })
				if err != nil {
					b.Fatal(err)
				}
				rs = append(rs, dt)
			}
			in, _ := d.c.GetInstance(ctx, name)
			st, _ := os.Stat(filepath.Join(d.instanceDir(in.ID), "memory"))
			d.c.StandbyInstance(ctx, name)
			stateFi, _ := os.Stat(filepath.Join(d.instanceDir(in.ID), "state"))
			d.c.RestoreInstance(ctx, name)
			_ = st
			rows = append(rows, []string{fmt.Sprintf("%d MiB", mib), ms(median(sb)), ms(median(rs)), ms(boot),
				fmt.Sprintf("%.3f", median(rs).Seconds()/boot.Seconds()), fmt.Sprintf("%d KB", stateFi.Size()>>10)})
			b.ReportMetric(median(sb).Seconds()*1000, fmt.Sprintf("standby-%dMiB-ms", mib))
			b.ReportMetric(median(rs).Seconds()*1000, fmt.Sprintf("restore-%dMiB-ms", mib))

			for _, pct := range []int{1, 10, 50} {
				dirty := mib * pct / 100
				if dirty == 0 {
					dirty = 1
				}
				// Fresh pages each time: remove the last round's file first
				// (its pages go back to the guest allocator, already dirty
				// once and written at the last standby).
				d.sh(name, fmt.Sprintf("rm -f /dev/shm/dirty; dd if=/dev/zero of=/dev/shm/dirty bs=1M count=%d 2>/dev/null", dirty))
				before := loopWritten(b, d.dataDir)
				dt, err := timed(func() error { _, err := d.c.StandbyInstance(ctx, name); return err })
				if err != nil {
					b.Fatal(err)
				}
				written := loopWritten(b, d.dataDir) - before
				dirtyRows = append(dirtyRows, []string{fmt.Sprintf("%d MiB", mib), fmt.Sprintf("%d %% (%d MiB)", pct, dirty), ms(dt),
					fmt.Sprintf("%.1f MiB", float64(written)/(1<<20)), fmt.Sprintf("%.2f", float64(written)/float64(int64(dirty)<<20))})
				if _, err := d.c.RestoreInstance(ctx, name); err != nil {
					b.Fatal(err)
				}
			}
			d.c.DeleteInstance(ctx, name, true)
		}
		table("standby and restore (median of 5); cold boot for comparison", rows)
		table("re-standby after dirtying part of RAM: time, and bytes the data disk wrote", dirtyRows)
	}
}

// BenchmarkFork: fork latency for 256 MiB and 2 GiB guests on XFS, to
// Standby (copy only) and to Running (copy + restore + agent), against a
// plain full copy of the same files (sparse copy_file_range, and a naive
// read/write of every byte).
func BenchmarkFork(b *testing.B) {
	d := benchDaemon(b)
	for i := 0; i < b.N; i++ {
		rows := [][]string{{"guest", "fork → Standby", "fork → Running", "sparse copy", "naive full copy", "full / fork"}}
		for _, mib := range []int{256, 2048} {
			name := fmt.Sprintf("src%d", mib)
			if _, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: name, Size: fmt.Sprintf("%dMB", mib)}); err != nil {
				b.Fatal(err)
			}
			d.waitRunning(name)
			d.sh(name, "mount -o remount,size=90% /dev/shm; dd if=/dev/zero of=/dev/shm/data bs=1M count=64 2>/dev/null")
			src, _ := d.c.StandbyInstance(ctx, name)
			var toStandby, toRunning []time.Duration
			for k := 0; k < 5; k++ {
				f := fmt.Sprintf("%s-s%d", name, k)
				dt, err := timed(func() error {
					_, err := d.c.ForkInstance(ctx, name, api.ForkInstanceRequest{Name: f})
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
				toStandby = append(toStandby, dt)
				d.c.DeleteInstance(ctx, f, true)
			}
			for k := 0; k < 3; k++ {
				f := fmt.Sprintf("%s-r%d", name, k)
				dt, err := timed(func() error {
					_, err := d.c.ForkInstance(ctx, name, api.ForkInstanceRequest{Name: f, TargetState: "Running"})
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
				toRunning = append(toRunning, dt)
				d.c.DeleteInstance(ctx, f, true)
			}
			srcDir := d.instanceDir(src.ID)
			sparse, err := timed(func() error {
				dst := filepath.Join(d.dataDir, "bench-sparse")
				return sparseCopy(filepath.Join(srcDir, "memory"), dst)
			})
			if err != nil {
				b.Fatal(err)
			}
			naive, err := timed(func() error {
				return naiveCopy(filepath.Join(srcDir, "memory"), filepath.Join(d.dataDir, "bench-naive"))
			})
			if err != nil {
				b.Fatal(err)
			}
			rows = append(rows, []string{fmt.Sprintf("%d MiB", mib), ms(median(toStandby)), ms(median(toRunning)), ms(sparse), ms(naive),
				fmt.Sprintf("%.0f×", naive.Seconds()/median(toStandby).Seconds())})
			b.ReportMetric(median(toStandby).Seconds()*1000, fmt.Sprintf("fork-standby-%dMiB-ms", mib))
			d.c.DeleteInstance(ctx, name, true)
		}
		table("fork latency on XFS (reflink): median of 5 (to Standby) and 3 (to Running)", rows)
	}
}

// naiveCopy reads and writes every byte of src (holes become zeros), as a
// plain `cp --sparse=never` would, and fsyncs.
func naiveCopy(src, dst string) error {
	defer os.Remove(dst)
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	if _, err := io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{in}, make([]byte, 1<<20)); err != nil {
		return err
	}
	return out.Sync()
}

// sparseCopy copies src's data segments (SEEK_DATA/SEEK_HOLE) with
// pread/pwrite, holes kept, and fsyncs: the fallback's method. Not
// copy_file_range: on XFS that would reflink.
func sparseCopy(src, dst string) error {
	defer os.Remove(dst)
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, _ := in.Stat()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := out.Truncate(fi.Size()); err != nil {
		return err
	}
	for off := int64(0); off < fi.Size(); {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break
		}
		hole, _ := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if _, err := io.Copy(io.NewOffsetWriter(out, data), io.NewSectionReader(in, data, hole-data)); err != nil {
			return err
		}
		off = hole
	}
	return out.Sync()
}

// BenchmarkForkChain: a 20-generation fork chain, 256 MiB guests, 5 % of
// RAM dirtied per generation (in the guest's tmpfs): fork latency of
// generation 20 against generation 1, with and without the background
// densify, and right after the standby or once the densify settled.
func BenchmarkForkChain(b *testing.B) {
	for i := 0; i < b.N; i++ {
		rows := [][]string{{"policy", "gens 1–3", "gen 10", "gens 18–20", "late / early", "memory extents at gen 20"}}
		for _, policy := range []struct {
			name   string
			args   []string
			settle bool
		}{
			{"no densify (before)", []string{"--densify=false"}, false},
			{"densify, fork right after standby", nil, false},
			{"densify, fork once it settled (after)", nil, true},
		} {
			d := newDaemon(b, testutil.XFS(b))
			d.args = policy.args
			d.start()
			d.run("gen0")
			// 120 MiB of guest data (a long-lived working set), and a
			// helper that rewrites pages of it at random.
			d.sh("gen0", "mount -o remount,size=90% /dev/shm; dd if=/dev/zero of=/dev/shm/base bs=1M count=120 2>/dev/null")
			installDirtier(b, d, "gen0")
			d.c.StandbyInstance(ctx, "gen0")
			lat := map[int]time.Duration{}
			var extents int
			for g := 1; g <= 20; g++ {
				prev, name := fmt.Sprintf("gen%d", g-1), fmt.Sprintf("gen%d", g)
				if policy.settle {
					waitDense(b, d, prev)
				}
				dt, err := timed(func() error {
					_, err := d.c.ForkInstance(ctx, prev, api.ForkInstanceRequest{Name: name})
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
				lat[g] = dt
				in, _ := d.c.GetInstance(ctx, prev)
				if l, err := clone.FileLayout(filepath.Join(d.instanceDir(in.ID), "memory")); err == nil {
					extents = l.Extents
				}
				if _, err := d.c.RestoreInstance(ctx, name); err != nil {
					b.Fatal(err)
				}
				// Dirty 5 % of RAM (3 277 pages) at uniformly random pages of
				// the data the chain already shares: the worst case.
				d.sh(name, "/dev/shm/dirtier /dev/shm/base 3277")
				if _, err := d.c.StandbyInstance(ctx, name); err != nil {
					b.Fatal(err)
				}
			}
			early := median([]time.Duration{lat[1], lat[2], lat[3]})
			late := median([]time.Duration{lat[18], lat[19], lat[20]})
			rows = append(rows, []string{policy.name, ms(early), ms(lat[10]), ms(late),
				fmt.Sprintf("%.1f×", late.Seconds()/early.Seconds()), strconv.Itoa(extents)})
			d.cleanup()
		}
		table("20-generation fork chain (256 MiB guest, 5 % of RAM rewritten at random pages per generation), fork → Standby latency (medians of three generations)", rows)
	}
}

// waitDense waits until ref's memory file is not Fragmented (the
// background densify is done), at most 60 s.
func waitDense(b *testing.B, d *daemon, ref string) {
	in, err := d.c.GetInstance(ctx, ref)
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(d.instanceDir(in.ID), "memory")
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if l, err := clone.FileLayout(path); err == nil && !l.Fragmented() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// installDirtier builds e2e/internal/dirtier (static) and copies it into
// the guest's tmpfs, where forks inherit it.
func installDirtier(b *testing.B, d *daemon, ref string) {
	bin := filepath.Join(b.TempDir(), "dirtier")
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "./e2e/internal/dirtier")
	cmd.Dir, cmd.Env = repoRoot(), append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build dirtier: %v\n%s", err, out)
	}
	f, err := os.Open(bin)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	code, err := d.c.Exec(ctx, ref, client.ExecOptions{Command: []string{"sh", "-c", "cat > /dev/shm/dirtier && chmod +x /dev/shm/dirtier"}, Stdin: f})
	if err != nil || code != 0 {
		b.Fatalf("install dirtier: %d %v", code, err)
	}
}
