package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/api"
)

// Networking benchmarks with real VMs, inside namespaces the benchmark
// makes (newNetTopo): nothing leaves them.
//
//	go test ./e2e -run '^$' -bench Network -benchtime 1x -timeout 30m

// forkTimes forks src (running) n times to Running and returns each
// call's duration; the forks are deleted after each, and the pool gets
// a moment to refill.
func forkTimes(b *testing.B, d *daemon, src string, n int) []time.Duration {
	var out []time.Duration
	for i := range n {
		name := fmt.Sprintf("%s-f%d", src, i)
		dt, err := timed(func() error {
			_, err := d.c.ForkInstance(ctx, src, api.ForkInstanceRequest{Name: name, FromRunning: true, TargetState: "Running"})
			return err
		})
		if err != nil {
			b.Fatalf("fork %s: %v", src, err)
		}
		out = append(out, dt)
		if err := d.c.DeleteInstance(ctx, name, true); err != nil {
			b.Fatal(err)
		}
		time.Sleep(time.Second) // the pool refills in the background
	}
	return out
}

// forkPhases reads the "fork phase" lines of d's log (instances records
// one per step of each fork) and returns, for each phase, the durations
// of the forks named prefix-f<i>.
func forkPhases(b *testing.B, d *daemon, prefix string) map[string][]time.Duration {
	raw, err := os.ReadFile(d.logPath)
	if err != nil {
		b.Fatal(err)
	}
	out := map[string][]time.Duration{}
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.Contains(line, `msg="fork phase"`) {
			continue
		}
		kv := map[string]string{}
		for _, f := range strings.Fields(line) {
			if k, v, ok := strings.Cut(f, "="); ok {
				kv[k] = v
			}
		}
		if !strings.HasPrefix(kv["name"], prefix+"-f") {
			continue
		}
		dt, err := time.ParseDuration(kv["took"])
		if err != nil {
			b.Fatalf("fork phase line %q: %v", line, err)
		}
		out[kv["phase"]] = append(out[kv["phase"]], dt)
	}
	return out
}

// BenchmarkNetworkFork: fork → Running with a network slot from the pool,
// without networking, and with an empty pool (CNI ADD on the path); and
// what hypeman's way would add: reconfiguring the guest through the agent
// after the restore (link down, MAC, address, route, neighbour flush).
func BenchmarkNetworkFork(b *testing.B) {
	const n = 5
	topo := newNetTopo(b)
	d := newNetDaemon(b, topo)
	off := false
	for _, c := range []api.CreateInstanceRequest{{Name: "net"}, {Name: "plain", Network: &api.NetworkRequest{Enabled: &off}}} {
		if _, err := d.c.CreateInstance(ctx, c); err != nil {
			b.Fatal(err)
		}
		d.waitRunning(c.Name)
	}
	topo2 := newNetTopo(b)
	d2 := newNetDaemon(b, topo2, "--network-pool", "-1")
	if _, err := d2.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "nopool"}); err != nil {
		b.Fatal(err)
	}
	d2.waitRunning("nopool")
	for i := 0; i < b.N; i++ {
		withNet := forkTimes(b, d, "net", n)
		without := forkTimes(b, d, "plain", n)
		noPool := forkTimes(b, d2, "nopool", n)

		// hypeman's way, measured on a fork: the agent reconfigures the
		// guest's NIC after the restore, before the fork counts as running.
		if _, err := d.c.ForkInstance(ctx, "net", api.ForkInstanceRequest{Name: "reconf", FromRunning: true, TargetState: "Running"}); err != nil {
			b.Fatal(err)
		}
		reconf := "ip link set eth0 down && ip link set eth0 address 02:5a:79:67:00:02 && ip addr flush dev eth0 && " +
			"ip addr add 169.254.0.2/30 dev eth0 && ip link set eth0 up && ip route replace default via 169.254.0.1 && ip neigh flush all"
		var reconfs, trues []time.Duration
		for range n {
			dt, _ := timed(func() error { d.sh("reconf", reconf); return nil })
			reconfs = append(reconfs, dt)
			dt, _ = timed(func() error { d.sh("reconf", "true"); return nil })
			trues = append(trues, dt)
		}
		d.c.DeleteInstance(ctx, "reconf", true)
		diff := median(withNet) - median(without)
		// What networking adds on the fork path, measured inside each
		// fork: its slot and its TAP's first open.
		pooled, plain, unpooled := forkPhases(b, d, "net"), forkPhases(b, d, "plain"), forkPhases(b, d2, "nopool")
		if len(pooled["network_slot"]) != n || len(pooled["network_tap"]) != n || len(unpooled["network_slot"]) != n ||
			len(plain["network_slot"]) != 0 || len(plain["copy"]) != n {
			b.Fatalf("fork phases in the logs: pooled %v, plain %v, empty pool %v", pooled, plain, unpooled)
		}
		netCost := func(p map[string][]time.Duration) time.Duration {
			var sums []time.Duration
			for i := range p["network_slot"] {
				sums = append(sums, p["network_slot"][i]+p["network_tap"][i])
			}
			return median(sums)
		}
		table(fmt.Sprintf("steps inside a fork (median of %d)", n), [][]string{
			{"step", "with network (pool)", "without network", "with network, empty pool"},
			{"copy (files, record)", ms(median(pooled["copy"])), ms(median(plain["copy"])), ms(median(unpooled["copy"]))},
			{"network: slot acquire", ms(median(pooled["network_slot"])), "-", ms(median(unpooled["network_slot"]))},
			{"network: TAP open", ms(median(pooled["network_tap"])), "-", ms(median(unpooled["network_tap"]))},
			{"network total (slot + TAP)", ms(netCost(pooled)), "-", ms(netCost(unpooled))},
			{"restore → Running (TAP open included)", ms(median(pooled["restore"])), ms(median(plain["restore"])), ms(median(unpooled["restore"]))},
		})
		b.ReportMetric(float64(netCost(pooled).Microseconds())/1000, "fork-net-steps-ms")
		b.ReportMetric(float64(netCost(unpooled).Microseconds())/1000, "fork-net-steps-nopool-ms")
		table(fmt.Sprintf("fork of a running VM → Running (median of %d, TCG)", n), [][]string{
			{"case", "median", "all"},
			{"with network (slot from the pool)", ms(median(withNet)), fmt.Sprint(withNet)},
			{"without network", ms(median(without)), fmt.Sprint(without)},
			{"with network, empty pool (CNI ADD on the path)", ms(median(noPool)), fmt.Sprint(noPool)},
			{"hypeman's way: in-guest reconfiguration exec", ms(median(reconfs)), fmt.Sprint(reconfs)},
			{"  an exec of `true`, for scale", ms(median(trues)), fmt.Sprint(trues)},
		})
		b.ReportMetric(float64(median(withNet).Microseconds())/1000, "fork-net-ms")
		b.ReportMetric(float64(median(without).Microseconds())/1000, "fork-plain-ms")
		b.ReportMetric(float64(diff.Microseconds())/1000, "net-cost-ms")
		b.ReportMetric(float64(median(noPool).Microseconds())/1000, "fork-nopool-ms")
		b.ReportMetric(float64(median(reconfs).Microseconds())/1000, "reconf-exec-ms")
	}
}

// getIn downloads url from inside the namespace at ns and returns the
// bytes and how long the body took.
func getIn(b *testing.B, ns, url string) (int64, time.Duration) {
	cl := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       func(ctx context.Context, network, addr string) (net.Conn, error) { return dialIn(ns, addr) },
	}}
	begin := time.Now()
	resp, err := cl.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || resp.StatusCode != 200 {
		b.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return n, time.Since(begin)
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e6 }

// BenchmarkNetworkThroughput: 32 MiB over HTTP guest ← upstream and
// host ← guest through a published port, beside the same transfer
// between the two plain namespaces on their veth (the ratio is what the
// slot, TAP and virtio-net cost; under TCG the guest's CPU dominates).
func BenchmarkNetworkThroughput(b *testing.B) {
	const size = 32 << 20
	topo := newNetTopo(b)
	// The outside's server (newNetTopo) serves from its temp dir; add a
	// big file to a second server's dir on another port.
	www := b.TempDir()
	f, _ := os.Create(filepath.Join(www, "big"))
	f.Truncate(size)
	f.Close()
	startOutsideHTTPD(b, topo, www, "8081")
	waitHTTPStatus(b, topo.host, "http://"+outsideIP+":8081/big")
	d := newNetDaemon(b, topo)
	if _, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "web", Publish: []api.PublishedPort{{HostPort: 8080, GuestPort: 80}},
		Cmd: []string{"sh", "-c", fmt.Sprintf("mkdir -p /www && dd if=/dev/zero of=/www/big bs=1M count=%d 2>/dev/null && exec httpd -f -p 80 -h /www", size>>20)}}); err != nil {
		b.Fatal(err)
	}
	d.waitRunning("web")
	waitHTTPStatus(b, topo.host, "http://127.0.0.1:8080/big")
	for i := 0; i < b.N; i++ {
		n, veth := getIn(b, topo.host, "http://"+outsideIP+":8081/big")
		if n != size {
			b.Fatalf("veth transfer: %d bytes", n)
		}
		// guest ← upstream, timed around the exec minus an exec of true.
		dtTrue, _ := timed(func() error { d.sh("web", "true"); return nil })
		dtGuest, _ := timed(func() error {
			if got := d.sh("web", "wget -qO- http://"+outsideIP+":8081/big | wc -c"); got != fmt.Sprint(size) {
				b.Fatalf("guest fetched %s bytes", got)
			}
			return nil
		})
		guestDown := dtGuest - dtTrue
		n, pub := getIn(b, topo.host, "http://127.0.0.1:8080/big")
		if n != size {
			b.Fatalf("published port transfer: %d bytes", n)
		}
		table("throughput of 32 MiB over HTTP (TCG guest)", [][]string{
			{"path", "MB/s", "ratio to the veth"},
			{"two plain namespaces on a veth", fmt.Sprintf("%.0f", mbps(size, veth)), "1"},
			{"guest ← upstream (guest wget)", fmt.Sprintf("%.1f", mbps(size, guestDown)), fmt.Sprintf("%.3f", veth.Seconds()/guestDown.Seconds())},
			{"host ← guest via published port 127.0.0.1:8080", fmt.Sprintf("%.1f", mbps(size, pub)), fmt.Sprintf("%.3f", veth.Seconds()/pub.Seconds())},
		})
		b.ReportMetric(mbps(size, veth), "veth-MB/s")
		b.ReportMetric(mbps(size, guestDown), "guest-down-MB/s")
		b.ReportMetric(mbps(size, pub), "published-MB/s")
	}
}
