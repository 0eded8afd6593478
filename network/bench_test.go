package network

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"
)

// BenchmarkAcquire: a slot from the pool (what fork and restore pay)
// against a slot made by CNI ADD on the caller's path.
func BenchmarkAcquire(b *testing.B) {
	for _, c := range []struct {
		name string
		pool int
	}{{"pool", 1}, {"cni-add", -1}} {
		b.Run(c.name, func(b *testing.B) {
			m, _ := testManager(b, func(cfg *Config) { cfg.PoolSize = c.pool })
			var total time.Duration
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				if c.pool > 0 {
					waitPool(b, m, c.pool)
				}
				owner := fmt.Sprintf("vm%d", i)
				b.StartTimer()
				start := time.Now()
				if _, err := m.Acquire(context.Background(), owner, SlotOptions{}); err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
				b.StopTimer()
				if err := m.Release(context.Background(), owner); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/acquire")
		})
	}
}

// BenchmarkThroughput moves the same bytes three ways in one run: between
// two plain namespaces on a veth (the daemon's and the outside's: the
// baseline), from the outside to a guest behind its slot (guest fetches
// from upstream), and from a guest to the host through a published port.
// It reports MB/s of each and the ratios to the baseline.
func BenchmarkThroughput(b *testing.B) {
	const size = 64 << 20
	upstreamNS(b)
	m, _ := testManager(b, nil)
	acquire(b, m, "g", SlotOptions{Publish: []Port{{HostPort: 18200, GuestPort: guestPort}}})
	guest := testGuest(b, m, "g")
	fetch := func(ns, url string) time.Duration {
		start := time.Now()
		resp, err := clientIn(ns, time.Minute).Get(url)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != size {
			b.Fatalf("%s: %d bytes, %v", url, n, err)
		}
		return time.Since(start)
	}
	q := fmt.Sprintf("/bytes?n=%d", size)
	var base, up, pub time.Duration
	b.SetBytes(3 * size)
	b.ResetTimer()
	for range b.N {
		base += fetch("", "http://"+upstreamHTTP+q)
		up += fetch(guest, "http://"+upstreamHTTP+q)
		pub += fetch("", "http://127.0.0.1:18200"+q)
	}
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(base), "veth-MB/s")
	b.ReportMetric(mbps(up), "guest-upstream-MB/s")
	b.ReportMetric(mbps(pub), "published-port-MB/s")
	b.ReportMetric(mbps(up)/mbps(base), "guest-upstream/veth")
	b.ReportMetric(mbps(pub)/mbps(base), "published-port/veth")
}
