package images

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/zygote/zygote/images/imagestest"
)

// uncompressedSize sums the layers' tar sizes: the bytes a conversion
// writes out, the basis of the MB/s figures.
func uncompressedSize(b *testing.B, img v1.Image) int64 {
	layers, err := img.Layers()
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		for {
			k, err := rc.Read(buf)
			n += int64(k)
			if err != nil {
				break
			}
		}
		rc.Close()
	}
	return n
}

// BenchmarkPullDebian pulls and converts the Debian bookworm + python3
// image from a registry on 127.0.0.1 into a fresh store (ext4).
func BenchmarkPullDebian(b *testing.B) {
	img := imagestest.DebianPython(b)
	reg := imagestest.StartRegistry(b)
	ref := reg + "/bench/debian:python3"
	imagestest.PushImage(b, ref, img)
	size := uncompressedSize(b, img)
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := newStore(b, Config{Root: filepath.Join(b.TempDir(), "images")})
		b.StartTimer()
		start := time.Now()
		if _, err := pullWait(b, s, ref); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
	}
	sec := total.Seconds() / float64(b.N)
	b.ReportMetric(sec, "s/pull")
	b.ReportMetric(float64(size)/1e6/sec, "MB/s")
}

// BenchmarkConvert converts the Debian image from an OCI layout on local
// disk three ways per iteration, interleaved so machine load hits all
// alike: zygote to ext4, the reference pipeline `umoci unpack` +
// `mkfs.ext4 -d` (the same mkfs.ext4 arguments and sizing as zygote's),
// and zygote to erofs. It reports MB/s of uncompressed layer data for
// each, and zygote-ext4 over the reference as "x-vs-umoci".
func BenchmarkConvert(b *testing.B) {
	if _, err := exec.LookPath("umoci"); err != nil {
		b.Skip("umoci not installed (apt-get install umoci)")
	}
	img := imagestest.DebianPython(b)
	dir := b.TempDir()
	lp, err := layout.Write(filepath.Join(dir, "layout"), empty.Index)
	if err != nil {
		b.Fatal(err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{refNameAnnotation: "bench"})); err != nil {
		b.Fatal(err)
	}
	size := uncompressedSize(b, img)
	zygote := func(format string) time.Duration {
		s := newStore(b, Config{Root: filepath.Join(b.TempDir(), "images"), Format: format})
		start := time.Now()
		if _, err := s.Import(context.Background(), filepath.Join(dir, "layout"), "bench/debian:x"); err != nil {
			b.Fatal(err)
		}
		d := time.Since(start)
		s.Close()
		os.RemoveAll(s.root)
		return d
	}
	umoci := func() time.Duration {
		work := b.TempDir()
		start := time.Now()
		out, err := exec.Command("umoci", "unpack", "--image", filepath.Join(dir, "layout")+":bench", filepath.Join(work, "bundle")).CombinedOutput()
		if err != nil {
			b.Fatalf("umoci unpack: %v: %s", err, out)
		}
		if err := buildExt4(context.Background(), filepath.Join(work, "bundle", "rootfs"), filepath.Join(work, "rootfs.ext4")); err != nil {
			b.Fatal(err)
		}
		d := time.Since(start)
		os.RemoveAll(work)
		return d
	}
	var ext4, ref, erofs time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ext4 += zygote(FormatExt4)
		ref += umoci()
		erofs += zygote(FormatErofs)
	}
	mbps := func(d time.Duration) float64 { return float64(size) / 1e6 / (d.Seconds() / float64(b.N)) }
	b.ReportMetric(float64(size)/1e6, "MB-uncompressed")
	b.ReportMetric(mbps(ext4), "zygote-ext4-MB/s")
	b.ReportMetric(mbps(ref), "umoci+mkfs.ext4-MB/s")
	b.ReportMetric(mbps(erofs), "zygote-erofs-MB/s")
	b.ReportMetric(ref.Seconds()/ext4.Seconds(), "x-vs-umoci")
}
