package e2e

// Image and disk benchmarks (real VMs, real registry on 127.0.0.1):
//
//	go test ./e2e -run '^$' -bench 'Image|DiskFork' -benchtime 1x -timeout 60m

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/images/imagestest"
	"github.com/zygote/zygote/internal/testutil"
)

// BenchmarkImageRunDebian: pull + convert + boot + first exec of the
// Debian python image from the local registry, cold (nothing in the image
// store) and warm (image ready), next to boot + first exec of the built-in
// initramfs guest.
func BenchmarkImageRunDebian(b *testing.B) {
	reg := imagestest.StartRegistry(b)
	ref := reg + "/debian:bookworm"
	imagestest.PushImage(b, ref, imagestest.DebianPython(b))
	d := benchDaemon(b)
	for i := 0; i < b.N; i++ {
		run := func(name, image string) time.Duration {
			dt, err := timed(func() error {
				req := api.CreateInstanceRequest{Name: name}
				if image != "" {
					req.Image, req.Cmd = image, []string{"sleep", "1000000"}
				}
				if _, err := d.c.CreateInstance(ctx, req); err != nil {
					return err
				}
				if _, err := d.c.WaitForState(ctx, name, "Running", 5*time.Minute); err != nil {
					return err
				}
				script := "true"
				if image != "" {
					script = "python3 -c 'print(6*7)'"
				}
				if out := d.sh(name, script); image != "" && out != "42" {
					return fmt.Errorf("first exec printed %q", out)
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			return dt
		}
		cold := run(fmt.Sprintf("cold-%d", i), ref)
		warm := run(fmt.Sprintf("warm-%d", i), ref)
		initramfs := run(fmt.Sprintf("initramfs-%d", i), "")
		table("create to first exec (Debian bookworm + python3, 216 MB uncompressed; TCG)", [][]string{
			{"case", "time"},
			{"image cold: pull + convert + boot + exec python3", ms(cold)},
			{"image warm: boot + exec python3", ms(warm)},
			{"built-in initramfs: boot + exec true", ms(initramfs)},
		})
		b.ReportMetric(float64(cold.Milliseconds()), "cold-ms")
		b.ReportMetric(float64(warm.Milliseconds()), "warm-ms")
		b.ReportMetric(float64(initramfs.Milliseconds()), "initramfs-ms")
	}
}

// BenchmarkDiskFork: fork (Standby → Standby, the copy alone) of an image
// instance whose 10 GB overlay holds 1 GiB of written data, against a
// built-in guest without disks, on XFS (reflink) and on ext4 (sparse copy).
func BenchmarkDiskFork(b *testing.B) {
	reg := imagestest.StartRegistry(b)
	ref := reg + "/busybox:bench"
	imagestest.PushImage(b, ref, imagestest.BusyboxImage(b))
	for _, fs := range []struct {
		name string
		dir  func(testing.TB) string
	}{{"xfs", testutil.XFS}, {"ext4", testutil.Ext4Dir}} {
		d := newDaemon(b, fs.dir(b))
		d.start()
		if _, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "disk", Image: ref, Cmd: []string{"-c", "sleep 1000000"}, OverlaySize: "10GB"}); err != nil {
			b.Fatal(err)
		}
		d.waitRunning("disk")
		d.sh("disk", "dd if=/dev/urandom of=/root/fill bs=1M count=1024 2>/dev/null; sync")
		d.run("plain")
		for _, n := range []string{"disk", "plain"} {
			if _, err := d.c.StandbyInstance(ctx, n); err != nil {
				b.Fatal(err)
			}
		}
		in, _ := d.c.GetInstance(ctx, "disk")
		var st os.FileInfo
		st, _ = os.Stat(filepath.Join(d.instanceDir(in.ID), "overlay.ext4"))
		times := map[string][]time.Duration{}
		for i := 0; i < 3; i++ {
			for _, n := range []string{"disk", "plain"} {
				name := fmt.Sprintf("%s-f%d", n, i)
				dt, err := timed(func() error {
					_, err := d.c.ForkInstance(ctx, n, api.ForkInstanceRequest{Name: name, TargetState: "Standby"})
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
				times[n] = append(times[n], dt)
				if err := d.c.DeleteInstance(ctx, name, true); err != nil {
					b.Fatal(err)
				}
			}
		}
		disk, plain := median(times["disk"]), median(times["plain"])
		table(fmt.Sprintf("fork Standby→Standby on %s, median of 3 (overlay file %d bytes apparent)", fs.name, st.Size()), [][]string{
			{"source", "fork"},
			{"image instance, 10 GB overlay with 1 GiB written", ms(disk)},
			{"built-in guest, no disk", ms(plain)},
			{"ratio", fmt.Sprintf("%.2f×", float64(disk)/float64(plain))},
		})
		b.ReportMetric(float64(disk.Microseconds())/1000, fs.name+"-disk-ms")
		b.ReportMetric(float64(plain.Microseconds())/1000, fs.name+"-plain-ms")
		for _, n := range []string{"disk", "plain"} {
			d.c.DeleteInstance(ctx, n, true)
		}
	}
}
