package qemu_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/guest/guesttest"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/hypervisor/qemu"
	"github.com/zygote/zygote/internal/testutil"
)

// ramUsage is what the guest-RAM mapping of a VMM costs (smaps of the
// mapping of its memory file), in bytes.
type ramUsage struct{ pss, rss, anon int64 }

func ramSmaps(tb testing.TB, pid int, dir string) ramUsage {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var u ramUsage
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if !strings.HasSuffix(fields[0], ":") { // a mapping's header line
			in = len(fields) >= 6 && fields[5] == filepath.Join(dir, "memory")
			continue
		}
		if !in || len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "Pss:":
			u.pss += kb << 10
		case "Rss:":
			u.rss += kb << 10
		case "Anonymous:":
			u.anon += kb << 10
		}
	}
	return u
}

func meminfoField(raw, name string) int64 {
	for _, line := range strings.Split(raw, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == name {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// memFree is /proc/meminfo's MemFree in bytes (page cache counts as
// used: MemAvailable would count it free, and the forks' cost is page
// cache).
func memFree(tb testing.TB) int64 {
	raw, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemFree:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// BenchmarkForkDensity is issue 12's measurement: a 512 MiB guest writes
// 192 MiB into /dev/shm and is parked; then, for owning forks (reflink
// copies) and for sharing forks (hard links, share=off), one fork alone
// and then 8 forks run at once, each reading those 192 MiB. It prints the
// PSS of the guest-RAM mapping summed over the 8 QEMUs against one fork's
// (the ratio), and the host's MemFree drop as a second view (noisy: the machine is shared). The
// data directory is a loop-mounted XFS (reflink), as in production.
//
//	go test ./hypervisor/qemu -run '^$' -bench ForkDensity -benchtime 1x
func BenchmarkForkDensity(b *testing.B) {
	guesttest.QEMU(b)
	assets := guesttest.Assets(b)
	d := newSharingDriver(b)
	ctx := context.Background()
	data := testutil.XFS(b)
	const n = 8
	srcDir := filepath.Join(data, "src")
	os.Mkdir(srcDir, 0o700)
	src := hypervisor.Spec{ID: "densitysrc", Dir: srcDir, VCPUs: 1, MemoryBytes: 512 << 20}
	vm, state, err := d.Boot(ctx, src, hypervisor.BootAssets{Kernel: assets.Kernel, Initramfs: assets.Initramfs})
	if err != nil {
		b.Fatal(err)
	}
	src.DriverState = state
	guestSh(b, vm, "mount -o remount,size=90% /dev/shm; dd if=/dev/urandom of=/dev/shm/blob bs=1M count=192 2>/dev/null")
	park(b, vm)
	type result struct {
		one, sum ramUsage
		avail    int64
		restore  time.Duration
	}
	run := func(shared bool, count int) (ramUsage, int64, time.Duration) {
		var vms []hypervisor.VM
		var dirs []string
		before := memFree(b)
		var restore time.Duration
		for i := 0; i < count; i++ {
			dir := filepath.Join(data, fmt.Sprintf("f%v%d", shared, i))
			if _, err := clone.Dir(ctx, srcDir, dir, clone.Options{NoSync: true}); err != nil {
				b.Fatal(err)
			}
			if shared {
				if err := d.LinkMemory(srcDir, dir); err != nil {
					b.Fatal(err)
				}
			}
			spec := src
			spec.ID, spec.Dir, spec.SharedMemory = fmt.Sprintf("density%d", i), dir, shared
			begin := time.Now()
			fvm, err := d.Restore(ctx, spec)
			if err != nil {
				b.Fatal(err)
			}
			guestSh(b, fvm, "true")
			restore += time.Since(begin)
			// dd, not cat: busybox cat splices to /dev/null without
			// touching the pages.
			guestSh(b, fvm, "dd if=/dev/shm/blob of=/dev/null bs=1M 2>/dev/null")
			vms, dirs = append(vms, fvm), append(dirs, dir)
		}
		var sum ramUsage
		for i, fvm := range vms {
			u := ramSmaps(b, fvm.Process().PID, dirs[i])
			sum.pss, sum.rss, sum.anon = sum.pss+u.pss, sum.rss+u.rss, sum.anon+u.anon
		}
		used := before - memFree(b)
		for i, fvm := range vms {
			fvm.Quit(ctx)
			os.RemoveAll(dirs[i])
		}
		return sum, used, restore / time.Duration(count)
	}
	for i := 0; i < b.N; i++ {
		res := map[bool]*result{}
		for _, shared := range []bool{false, true} {
			r := &result{}
			r.one, _, _ = run(shared, 1)
			r.sum, r.avail, r.restore = run(shared, n)
			res[shared] = r
		}
		fmt.Printf("\nfork density: 512 MiB guest, 192 MiB blob in /dev/shm read by every fork, %d forks Running at once (TCG)\n", n)
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "forks\tRAM PSS, 1 fork\tRAM PSS, 8 forks\tratio\tRSS, 8 forks\tprivate (CoW), 8 forks\thost MemFree drop, 8 forks\trestore to agent, mean")
		for _, shared := range []bool{false, true} {
			r, name := res[shared], "owned (reflink copies)"
			if shared {
				name = "shared (hard link, share=off)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.2f×\t%s\t%s\t%s\t%s\n", name, mib(r.one.pss), mib(r.sum.pss),
				float64(r.sum.pss)/float64(r.one.pss), mib(r.sum.rss), mib(r.sum.anon), mib(r.avail), msOf(r.restore))
		}
		tw.Flush()
		b.ReportMetric(float64(res[false].sum.pss)/float64(res[false].one.pss), "owned-ratio")
		b.ReportMetric(float64(res[true].sum.pss)/float64(res[true].one.pss), "shared-ratio")
		b.ReportMetric(float64(res[true].sum.pss)/(1<<20), "shared-pss-MiB")
		b.ReportMetric(float64(res[false].sum.pss)/(1<<20), "owned-pss-MiB")
	}
}

// forkTo makes a fork directory of the parked srcDir (clone, then a link
// for a sharing fork) and restores it to agent ready: the product's fork
// to Running, driver side. It may run on any goroutine.
func forkTo(d *qemu.Driver, src hypervisor.Spec, dir, id string, shared bool) (hypervisor.VM, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := clone.Dir(ctx, src.Dir, dir, clone.Options{NoSync: true}); err != nil {
		return nil, err
	}
	if shared {
		if err := d.LinkMemory(src.Dir, dir); err != nil {
			return nil, err
		}
	}
	spec := src
	spec.ID, spec.Dir, spec.SharedMemory = id, dir, shared
	vm, err := d.Restore(ctx, spec)
	if err != nil {
		return nil, err
	}
	c, err := agent.DialFunc(ctx, vm.DialAgent, agent.Options{})
	if err != nil {
		vm.Quit(ctx)
		return nil, err
	}
	defer c.Close()
	if code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"true"}}); err != nil || code != 0 {
		vm.Quit(ctx)
		return nil, fmt.Errorf("agent exec: %d %v", code, err)
	}
	return vm, nil
}

// BenchmarkSharingLatency: fork to Running and standby of a sharing fork
// against an owning one, at 256 MiB and 2 GiB, after the fork dirtied 1 %
// and 50 % of its RAM (random bytes, so every dirtied page is a full page
// record). Standby is pause + save state + quit: an owning fork fsyncs
// its dirty memory file; a sharing fork's QEMU streams all of its RAM and
// the filter keeps its own pages.
//
//	go test ./hypervisor/qemu -run '^$' -bench SharingLatency -benchtime 1x
func BenchmarkSharingLatency(b *testing.B) {
	guesttest.QEMU(b)
	assets := guesttest.Assets(b)
	d := newSharingDriver(b)
	ctx := context.Background()
	data := testutil.XFS(b)
	type row struct {
		size            int64
		dirty           int
		shared          bool
		fork, standby   time.Duration
		state, ownBytes int64
	}
	for i := 0; i < b.N; i++ {
		var rows []row
		for _, size := range []int64{256 << 20, 2 << 30} {
			srcDir := filepath.Join(data, fmt.Sprintf("src%d", size>>20))
			os.Mkdir(srcDir, 0o700)
			src := hypervisor.Spec{ID: fmt.Sprintf("lat%d", size>>20), Dir: srcDir, VCPUs: 1, MemoryBytes: size}
			vm, state, err := d.Boot(ctx, src, hypervisor.BootAssets{Kernel: assets.Kernel, Initramfs: assets.Initramfs})
			if err != nil {
				b.Fatal(err)
			}
			src.DriverState = state
			guestSh(b, vm, "mount -o remount,size=90% /dev/shm; dd if=/dev/urandom of=/dev/shm/seed bs=1M count=1 2>/dev/null")
			park(b, vm)
			for _, pct := range []int{1, 50} {
				for _, shared := range []bool{false, true} {
					dir := filepath.Join(data, fmt.Sprintf("f%d-%d-%v", size>>20, pct, shared))
					begin := time.Now()
					fvm, err := forkTo(d, src, dir, "latfork", shared)
					if err != nil {
						b.Fatal(err)
					}
					r := row{size: size, dirty: pct, shared: shared, fork: time.Since(begin)}
					mibs := size * int64(pct) / 100 >> 20
					guestSh(b, fvm, fmt.Sprintf("for i in $(seq %d); do cat /dev/shm/seed; done > /dev/shm/dirty", mibs))
					begin = time.Now()
					st := park(b, fvm)
					r.standby, r.state, r.ownBytes = time.Since(begin), st.StateBytes, st.DirtyBytes
					rows = append(rows, r)
					os.RemoveAll(dir)
				}
			}
			os.RemoveAll(srcDir)
		}
		fmt.Println("\nfork to Running (clone, link when shared, restore, agent ready) and standby (pause, save, quit) of one fork; TCG, XFS")
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "RAM\tdirtied\tfork\tfork → Running\tstandby\tstate file")
		for _, r := range rows {
			mode := "owned"
			if r.shared {
				mode = "shared"
			}
			fmt.Fprintf(tw, "%s\t%d %%\t%s\t%s\t%s\t%s\n", mib(r.size), r.dirty, mode, msOf(r.fork), msOf(r.standby), mib(r.state))
			b.ReportMetric(r.standby.Seconds()*1000, fmt.Sprintf("standby-ms-%dM-%dpct-%s", r.size>>20, r.dirty, mode))
		}
		tw.Flush()
	}
}

// BenchmarkConcurrentForks: 32 forks of one parked 256 MiB parent restored
// to agent ready at once, owning then sharing: wall time, and the host's
// peak memory use (the largest MemFree drop, sampled every 20 ms).
//
//	go test ./hypervisor/qemu -run '^$' -bench ConcurrentForks -benchtime 1x
func BenchmarkConcurrentForks(b *testing.B) {
	guesttest.QEMU(b)
	assets := guesttest.Assets(b)
	d := newSharingDriver(b)
	ctx := context.Background()
	data := testutil.XFS(b)
	const n = 32
	srcDir := filepath.Join(data, "src")
	os.Mkdir(srcDir, 0o700)
	src := hypervisor.Spec{ID: "concsrc", Dir: srcDir, VCPUs: 1, MemoryBytes: 256 << 20}
	vm, state, err := d.Boot(ctx, src, hypervisor.BootAssets{Kernel: assets.Kernel, Initramfs: assets.Initramfs})
	if err != nil {
		b.Fatal(err)
	}
	src.DriverState = state
	guestSh(b, vm, "dd if=/dev/urandom of=/dev/shm/blob bs=1M count=64 2>/dev/null")
	park(b, vm)
	for i := 0; i < b.N; i++ {
		type res struct {
			wall time.Duration
			peak int64
		}
		out := map[bool]res{}
		for _, shared := range []bool{false, true} {
			before := memFree(b)
			stop := make(chan struct{})
			peakc := make(chan int64)
			go func() { // owner: this loop, which stops it
				peak := int64(0)
				for {
					if raw, err := os.ReadFile("/proc/meminfo"); err == nil {
						peak = max(peak, before-meminfoField(string(raw), "MemFree:"))
					}
					select {
					case <-stop:
						peakc <- peak
						return
					case <-time.After(20 * time.Millisecond):
					}
				}
			}()
			begin := time.Now()
			vms := make([]hypervisor.VM, n)
			errs := make(chan error, n)
			for k := 0; k < n; k++ {
				go func() { // owner: this loop, which waits for all n
					var err error
					vms[k], err = forkTo(d, src, filepath.Join(data, fmt.Sprintf("c%v%d", shared, k)), fmt.Sprintf("conc%d", k), shared)
					errs <- err
				}()
			}
			var failed error
			for k := 0; k < n; k++ {
				if err := <-errs; err != nil {
					failed = err
				}
			}
			wall := time.Since(begin)
			close(stop)
			out[shared] = res{wall, <-peakc}
			if failed != nil {
				b.Errorf("a concurrent fork failed: %v", failed)
			}
			for k, v := range vms {
				if v != nil {
					v.Quit(ctx)
				}
				os.RemoveAll(filepath.Join(data, fmt.Sprintf("c%v%d", shared, k)))
			}
		}
		fmt.Printf("\n%d concurrent forks of one parked 256 MiB parent (64 MiB blob) to agent ready, TCG, 2 cores\n", n)
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "forks\twall time\tpeak host memory (MemFree drop)")
		fmt.Fprintf(tw, "owned\t%s\t%s\n", msOf(out[false].wall), mib(out[false].peak))
		fmt.Fprintf(tw, "shared\t%s\t%s\n", msOf(out[true].wall), mib(out[true].peak))
		tw.Flush()
		b.ReportMetric(out[false].wall.Seconds(), "owned-wall-s")
		b.ReportMetric(out[true].wall.Seconds(), "shared-wall-s")
	}
}
