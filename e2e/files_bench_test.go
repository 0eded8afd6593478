package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/zygote/zygote/api"
)

// BenchmarkCopyLargeFile moves one large file out of a guest and back in
// with `zygote cp` and reports MB/s each way and the daemon's peak RSS
// growth (the copy is streamed: it stays flat whatever the size).
// ZYGOTE_CP_BENCH_MIB sets the size (default 1024: 1 GiB, several
// minutes under TCG). The file lives in the guest's tmpfs root, which
// may use half the guest's RAM: the guest gets 2×size + 512 MB.
//
//	go test ./e2e -run '^$' -bench CopyLargeFile -benchtime 1x -timeout 60m
func BenchmarkCopyLargeFile(b *testing.B) {
	mib := 1024
	if v := os.Getenv("ZYGOTE_CP_BENCH_MIB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("ZYGOTE_CP_BENCH_MIB=%q: want a positive number of MiB", v)
		}
		mib = n
	}
	d := benchDaemon(b)
	in, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "bench", Size: fmt.Sprintf("%dMB", 2*mib+512)})
	if err != nil {
		b.Fatal(err)
	}
	d.waitRunning(in.ID)
	d.sh("bench", fmt.Sprintf("dd if=/dev/zero of=/root/big bs=1M count=%d 2>/dev/null", mib))
	host := filepath.Join(b.TempDir(), "big")
	size := float64(mib << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var out, back time.Duration
		outGrowth := peakGrowth(b, d, func() {
			begin := time.Now()
			if msg, code := d.cli("cp", "-q", "bench:/root/big", host); code != 0 {
				b.Fatalf("cp out: %d %s", code, msg)
			}
			out = time.Since(begin)
		})
		d.sh("bench", "rm /root/big")
		inGrowth := peakGrowth(b, d, func() {
			begin := time.Now()
			if msg, code := d.cli("cp", "-q", host, "bench:/root/big"); code != 0 {
				b.Fatalf("cp in: %d %s", code, msg)
			}
			back = time.Since(begin)
		})
		os.Remove(host)
		b.ReportMetric(size/out.Seconds()/1e6, "MB/s-out")
		b.ReportMetric(size/back.Seconds()/1e6, "MB/s-in")
		b.ReportMetric(float64(max(outGrowth, inGrowth))/(1<<20), "MiB-peak-RSS-growth")
		table(fmt.Sprintf("zygote cp of %d MiB (TCG guest)", mib), [][]string{
			{"direction", "time", "MB/s", "daemon peak RSS growth"},
			{"out of the guest", ms(out), fmt.Sprintf("%.1f", size/out.Seconds()/1e6), fmt.Sprintf("%.1f MiB", float64(outGrowth)/(1<<20))},
			{"into the guest", ms(back), fmt.Sprintf("%.1f", size/back.Seconds()/1e6), fmt.Sprintf("%.1f MiB", float64(inGrowth)/(1<<20))},
		})
	}
}

// peakGrowth runs f and returns how far the daemon's peak RSS rose above
// its RSS when f began (writing 5 to clear_refs resets the peak).
func peakGrowth(tb testing.TB, d *daemon, f func()) int64 {
	pid := d.cmd.Process.Pid
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		tb.Fatalf("reset the daemon's peak RSS: %v", err)
	}
	start := statusKB(tb, pid, "VmRSS")
	f()
	return (statusKB(tb, pid, "VmHWM") - start) << 10
}
