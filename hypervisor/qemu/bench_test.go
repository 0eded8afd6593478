package qemu_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/guest/guesttest"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/hypervisor/qemu"
)

// BenchmarkConfinement compares an unconfined VMM (no -sandbox, the
// daemon's capabilities) with the default confined one, in one run and
// interleaved (this machine is shared and noisy): boot to agent ready,
// standby (pause, save, quit) and restore to agent ready, 256 MiB guest,
// medians of 3 boots and 6 standby/restore cycles.
//
//	go test ./hypervisor/qemu -run '^$' -bench Confinement -benchtime 1x
func BenchmarkConfinement(b *testing.B) {
	guesttest.QEMU(b)
	assets := guesttest.Assets(b)
	copyFile := func(ctx context.Context, src, dst string) error {
		_, err := clone.File(ctx, src, dst, clone.Options{NoSync: true, Logger: slog.New(slog.DiscardHandler)})
		return err
	}
	// Probe the accelerator once, outside the timings.
	probe, err := qemu.New(qemu.Config{ShareFile: copyFile})
	if err != nil {
		b.Fatal(err)
	}
	accel, err := probe.Accelerator(context.Background(), assets.Kernel)
	if err != nil {
		b.Fatal(err)
	}
	modes := []struct {
		name string
		cfg  qemu.Config
	}{
		{"unconfined (before)", qemu.Config{Accel: accel, Unconfined: true, ShareFile: copyFile}},
		{"confined (after)", qemu.Config{Accel: accel, ShareFile: copyFile}},
	}
	ctx := context.Background()
	type times struct{ boot, standby, restore []time.Duration }
	for i := 0; i < b.N; i++ {
		res := make([]times, len(modes))
		for round := 0; round < 3; round++ {
			for m, mode := range modes {
				d, err := qemu.New(mode.cfg)
				if err != nil {
					b.Fatal(err)
				}
				dir := b.TempDir()
				spec := hypervisor.Spec{ID: fmt.Sprintf("bench%d%d", round, m), Dir: dir, VCPUs: 1, MemoryBytes: 256 << 20}
				begin := time.Now()
				vm, state, err := d.Boot(ctx, spec, hypervisor.BootAssets{Kernel: assets.Kernel, Initramfs: assets.Initramfs})
				if err != nil {
					b.Fatal(err)
				}
				spec.DriverState = state
				guestSh(b, vm, "true")
				res[m].boot = append(res[m].boot, time.Since(begin))
				for k := 0; k < 2; k++ {
					begin = time.Now()
					if err := vm.Pause(ctx); err != nil {
						b.Fatal(err)
					}
					if _, err := vm.SaveState(ctx); err != nil {
						b.Fatal(err)
					}
					vm.Quit(ctx)
					res[m].standby = append(res[m].standby, time.Since(begin))
					begin = time.Now()
					if vm, err = d.Restore(ctx, spec); err != nil {
						b.Fatal(err)
					}
					guestSh(b, vm, "true")
					res[m].restore = append(res[m].restore, time.Since(begin))
				}
				vm.Quit(ctx)
				os.RemoveAll(dir)
			}
		}
		fmt.Println("\nconfinement: boot and restore to agent ready, standby = pause + save + quit; 256 MiB, TCG, medians")
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "VMM\tboot\tstandby\trestore")
		for m, mode := range modes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", mode.name, msOf(median(res[m].boot)), msOf(median(res[m].standby)), msOf(median(res[m].restore)))
		}
		tw.Flush()
		b.ReportMetric(median(res[1].boot).Seconds()/median(res[0].boot).Seconds(), "boot-confined/unconfined")
		b.ReportMetric(median(res[1].standby).Seconds()/median(res[0].standby).Seconds(), "standby-confined/unconfined")
		b.ReportMetric(median(res[1].restore).Seconds()/median(res[0].restore).Seconds(), "restore-confined/unconfined")
	}
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func msOf(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// BenchmarkRestorePageCache: what the eviction of a parked VM's page cache
// costs the restore (to agent ready, 256 MiB guest): the same VM parked
// 10 times, alternately evicted and kept, so both see the same load.
//
//	go test ./hypervisor/qemu -run '^$' -bench RestorePageCache -benchtime 1x
func BenchmarkRestorePageCache(b *testing.B) {
	guesttest.QEMU(b)
	assets := guesttest.Assets(b)
	d, err := qemu.New(qemu.Config{ShareFile: func(ctx context.Context, src, dst string) error {
		_, err := clone.File(ctx, src, dst, clone.Options{NoSync: true, Logger: slog.New(slog.DiscardHandler)})
		return err
	}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	dir := b.TempDir()
	spec := hypervisor.Spec{ID: "pagecache0", Dir: dir, VCPUs: 1, MemoryBytes: 256 << 20}
	vm, state, err := d.Boot(ctx, spec, hypervisor.BootAssets{Kernel: assets.Kernel, Initramfs: assets.Initramfs})
	if err != nil {
		b.Fatal(err)
	}
	spec.DriverState = state
	guestSh(b, vm, "mount -o remount,size=90% /dev/shm; dd if=/dev/zero of=/dev/shm/warm bs=1M count=32 2>/dev/null; rm /dev/shm/warm")
	for i := 0; i < b.N; i++ {
		res := map[bool][]time.Duration{}
		for k := 0; k < 10; k++ {
			keep := k%2 == 1
			qemu.KeepPageCache(d, keep)
			if err := vm.Pause(ctx); err != nil {
				b.Fatal(err)
			}
			if _, err := vm.SaveState(ctx); err != nil {
				b.Fatal(err)
			}
			vm.Quit(ctx)
			begin := time.Now()
			if vm, err = d.Restore(ctx, spec); err != nil {
				b.Fatal(err)
			}
			guestSh(b, vm, "true")
			res[keep] = append(res[keep], time.Since(begin))
		}
		fmt.Printf("\nrestore to agent ready, 256 MiB: page cache evicted at standby %s, kept %s (medians of 5)\n", msOf(median(res[false])), msOf(median(res[true])))
		b.ReportMetric(median(res[false]).Seconds()*1000, "restore-evicted-ms")
		b.ReportMetric(median(res[true]).Seconds()*1000, "restore-kept-ms")
	}
	vm.Quit(ctx)
}
