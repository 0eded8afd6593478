package network

import (
	"context"
	"fmt"
	"io"
	"net/http"
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

// BenchmarkThroughput moves the same bytes through a slot and, in the
// same run, between two plain namespaces on a veth (the daemon's and the
// outside's: the baseline): a guest downloading from and uploading to the
// outside, and the host downloading from a guest through a published port
// on 127.0.0.1. It reports MB/s of each and the ratio to the baseline of
// the same direction.
func BenchmarkThroughput(b *testing.B) {
	const size = 64 << 20
	upstreamNS(b)
	m, _ := testManager(b, nil)
	acquire(b, m, "g", SlotOptions{Publish: []Port{{HostPort: 18200, GuestPort: guestPort}}})
	guest := testGuest(b, m, "g")
	timed := func(ns, method, url string) time.Duration {
		var body io.Reader
		if method == http.MethodPost {
			body = io.LimitReader(zeros{}, size)
		}
		req, _ := http.NewRequest(method, url, body)
		if body != nil {
			req.ContentLength = size
		}
		start := time.Now()
		resp, err := clientIn(ns, time.Minute).Do(req)
		if err != nil {
			b.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || (method == http.MethodGet && len(got) != size) || (method == http.MethodPost && string(got) != fmt.Sprint(size)) {
			b.Fatalf("%s %s: %d bytes back, %v", method, url, len(got), err)
		}
		return time.Since(start)
	}
	down := fmt.Sprintf("/bytes?n=%d", size)
	var baseDown, baseUp, guestDown, guestUp, published time.Duration
	b.SetBytes(5 * size)
	b.ResetTimer()
	for range b.N {
		baseDown += timed("", http.MethodGet, "http://"+upstreamHTTP+down)
		baseUp += timed("", http.MethodPost, "http://"+upstreamHTTP+"/")
		guestDown += timed(guest, http.MethodGet, "http://"+upstreamHTTP+down)
		guestUp += timed(guest, http.MethodPost, "http://"+upstreamHTTP+"/")
		published += timed("", http.MethodGet, "http://127.0.0.1:18200"+down)
	}
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(baseDown), "veth-down-MB/s")
	b.ReportMetric(mbps(baseUp), "veth-up-MB/s")
	b.ReportMetric(mbps(guestDown), "guest-down-MB/s")
	b.ReportMetric(mbps(guestUp), "guest-up-MB/s")
	b.ReportMetric(mbps(published), "published-port-MB/s")
	b.ReportMetric(mbps(guestDown)/mbps(baseDown), "guest-down/veth")
	b.ReportMetric(mbps(guestUp)/mbps(baseUp), "guest-up/veth")
	b.ReportMetric(mbps(published)/mbps(baseDown), "published-port/veth")
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
