package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/internal/crashpoint"
	"github.com/zygote/zygote/internal/ids"
	"github.com/zygote/zygote/internal/testutil"
)

// Networking end to end, with real VMs. Every packet stays inside
// namespaces the test makes: the daemon runs in a fresh network namespace
// ("the host"); "the outside" is a second namespace joined to it by a
// veth pair, holding an HTTP server on a documentation address
// (203.0.113.1) and the upstream of the host's default route. Both are
// removed at the end, after `zygote serve --cleanup-network`.

const (
	outsideIP   = "203.0.113.1"
	hostIP      = "203.0.113.2"
	outsidePage = "hello from outside"
	guestPage   = "guest-page"
	guestMAC    = "02:5a:79:67:00:02"
)

// netWorkload serves guestPage on port 80 and echoes on port 7000.
var netWorkload = []string{"sh", "-c", "mkdir -p /www && echo " + guestPage + " > /www/index.html && " +
	"(nc -ll -p 7000 -e /bin/cat &) && exec httpd -f -p 80 -h /www"}

type netTopo struct {
	host, outside string // namespace paths
}

// newNetTopo makes the two namespaces, the veth between them, the default
// route and the outside's HTTP server.
func newNetTopo(t testing.TB) netTopo {
	t.Helper()
	testutil.RequirePrivileged(t, "network namespaces, CNI plugins and iptables", "ip", "nsenter", "busybox", "iptables", "/usr/lib/cni/bridge")
	suffix := ids.New()[:8]
	names := []string{"zgh-" + suffix, "zgo-" + suffix}
	for _, n := range names {
		mustRun(t, "ip", "netns", "add", n)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n).Run() })
	}
	topo := netTopo{host: "/run/netns/" + names[0], outside: "/run/netns/" + names[1]}
	h, o := []string{"ip", "-n", names[0]}, []string{"ip", "-n", names[1]}
	mustRun(t, append(h, "link", "add", "up0", "type", "veth", "peer", "name", "down0", "netns", names[1])...)
	mustRun(t, append(h, "addr", "add", hostIP+"/24", "dev", "up0")...)
	mustRun(t, append(o, "addr", "add", outsideIP+"/24", "dev", "down0")...)
	for _, ns := range [][]string{h, o} {
		mustRun(t, append(ns, "link", "set", "lo", "up")...)
	}
	mustRun(t, append(h, "link", "set", "up0", "up")...)
	mustRun(t, append(o, "link", "set", "down0", "up")...)
	mustRun(t, append(h, "route", "add", "default", "via", outsideIP)...)

	www := t.TempDir()
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte(outsidePage+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	startOutsideHTTPD(t, topo, www, "8080")
	waitHTTPStatus(t, topo.host, "http://"+outsideIP+":8080/")
	return topo
}

// startOutsideHTTPD serves dir on outsideIP:port from the outside
// namespace, until the test ends.
func startOutsideHTTPD(t testing.TB, topo netTopo, dir, port string) *exec.Cmd {
	t.Helper()
	srv := exec.Command("nsenter", "--net="+topo.outside, "busybox", "httpd", "-f", "-p", outsideIP+":"+port, "-h", dir)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	return srv
}

// waitHTTPStatus waits until url answers 200 from the namespace at ns.
func waitHTTPStatus(t testing.TB, ns, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := httpGetIn(ns, url)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func mustRun(t testing.TB, argv ...string) {
	t.Helper()
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
}

// inNetNS runs fn on a thread switched into the namespace at path.
// Sockets made there stay in that namespace.
func inNetNS(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		f, err := os.Open(path)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// dialIn opens a TCP connection from inside the namespace at path.
func dialIn(path, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetNS(path, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	return c, err
}

// httpGetIn fetches url from inside the namespace at path.
func httpGetIn(path, url string) (string, error) {
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       func(ctx context.Context, network, addr string) (net.Conn, error) { return dialIn(path, addr) },
	}}
	resp, err := cl.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return strings.TrimSpace(string(b)), err
}

// newNetDaemon starts a daemon with networking inside topo's host
// namespace; at the end its network is cleaned up with
// `zygote serve --cleanup-network` before the namespaces go.
func newNetDaemon(t testing.TB, topo netTopo, args ...string) *daemon {
	dataDir := testutil.XFS(t)
	t.Cleanup(func() { // after the daemon's own cleanup (registered later, runs first)
		out, err := exec.Command("nsenter", append([]string{"--net=" + topo.host, zygoteBin, "serve", "--data-dir", dataDir, "--cleanup-network"}, args...)...).CombinedOutput()
		if err != nil {
			t.Errorf("zygote serve --cleanup-network: %v\n%s", err, out)
		}
		if ents, _ := os.ReadDir(filepath.Join(dataDir, "network", "netns")); len(ents) > 0 {
			t.Errorf("slot namespaces left after --cleanup-network: %v", ents)
		}
	})
	d := newDaemon(t, dataDir)
	d.netns = topo.host
	// The guests' resolver is in the outside namespace too (not the
	// host's /etc/resolv.conf).
	d.args = append([]string{"--dns", outsideIP}, args...)
	d.start()
	return d
}

func slotIP(t *testing.T, in api.Instance) string {
	t.Helper()
	n := in.Network
	if !n.Enabled || n.IP == nil || n.MAC == nil || *n.MAC != guestMAC || n.Name == "" {
		t.Fatalf("instance %s network = %+v: want enabled with an ip, mac %s and a name", in.Name, n, guestMAC)
	}
	ip := net.ParseIP(*n.IP)
	if ip == nil || !(&net.IPNet{IP: net.IPv4(10, 89, 0, 0), Mask: net.CIDRMask(16, 32)}).Contains(ip) {
		t.Fatalf("instance %s ip %q: not in the default subnet 10.89.0.0/16", in.Name, *n.IP)
	}
	return *n.IP
}

func slotRecords(d *daemon) int {
	ents, _ := os.ReadDir(filepath.Join(d.dataDir, "network", "slots"))
	return len(ents)
}

// guestAddrs is the guest's own view of its IPv4 addresses.
func guestAddrs(d *daemon, ref string) string {
	return d.sh(ref, "ip -4 -o addr show | awk '{print $2, $4}' | sort | tr '\\n' ' '")
}

const guestSees = "eth0 169.254.0.2/30 lo 127.0.0.1/8"

func TestNetwork(t *testing.T) {
	topo := newNetTopo(t)
	d := newNetDaemon(t, topo)

	in, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "web", Cmd: netWorkload,
		Publish: []api.PublishedPort{{HostPort: 8080, GuestPort: 80}}})
	if err != nil {
		t.Fatalf("create web: %v", err)
	}
	web := d.waitRunning(in.ID)
	webIP := slotIP(t, web)
	if len(web.Network.Publish) != 1 || web.Network.Publish[0].HostPort != 8080 {
		t.Fatalf("web publish = %+v", web.Network.Publish)
	}
	waitHTTP(t, topo.host, "http://"+webIP+":80/")

	t.Run("guest fetches from the outside and sees only its fixed address", func(t *testing.T) {
		if got := d.sh("web", "wget -qO- http://"+outsideIP+":8080/"); got != outsidePage {
			t.Fatalf("guest fetched %q", got)
		}
		if got := strings.TrimSpace(guestAddrs(d, "web")); got != guestSees {
			t.Fatalf("guest addresses %q, want %q", got, guestSees)
		}
		if out, code := d.cli("inspect", "web"); code != 0 || !strings.Contains(out, `"ip": "`+webIP+`"`) {
			t.Fatalf("zygote inspect: %d %s", code, out)
		}
		if out, code := d.cli("stats", "web"); code != 0 || !strings.Contains(out, "net rx") {
			t.Fatalf("zygote stats: %d %s", code, out)
		}
		if out, code := d.cli("resources"); code != 0 || !strings.Contains(out, "network slots") {
			t.Fatalf("zygote resources: %d %s", code, out)
		}
		// The TAP's counters, from the guest's side.
		st, err := d.c.InstanceStats(ctx, "web")
		if err != nil || st.NetworkRxBytes < uint64(len(outsidePage)) || st.NetworkTxBytes == 0 || st.CPUSeconds <= 0 || st.MemoryRSSBytes <= 0 {
			t.Fatalf("stats %+v %v", st, err)
		}
	})

	t.Run("published port answers from the host, its loopback and the outside", func(t *testing.T) {
		for _, c := range []struct{ ns, url string }{
			{topo.host, "http://127.0.0.1:8080/"},
			{topo.host, "http://" + hostIP + ":8080/"},
			{topo.outside, "http://" + hostIP + ":8080/"},
			{topo.host, "http://" + webIP + ":80/"},
		} {
			if got, err := httpGetIn(c.ns, c.url); err != nil || got != guestPage {
				t.Errorf("GET %s from %s: %q %v", c.url, filepath.Base(c.ns), got, err)
			}
		}
		_, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "web2", Publish: []api.PublishedPort{{HostPort: 8080, GuestPort: 80}}})
		var se *api.StatusError
		if !errors.As(err, &se) || se.Status != 409 {
			t.Fatalf("a second instance publishing host port 8080: %v, want 409", err)
		}
		if _, err := d.c.GetInstance(ctx, "web2"); err == nil {
			t.Fatal("the refused instance exists")
		}
	})

	t.Run("opt-out has only lo", func(t *testing.T) {
		off := false
		in, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "lonely", Network: &api.NetworkRequest{Enabled: &off}})
		if err != nil {
			t.Fatal(err)
		}
		lonely := d.waitRunning(in.ID)
		if lonely.Network.Enabled || lonely.Network.IP != nil {
			t.Fatalf("opted-out network = %+v", lonely.Network)
		}
		if got := d.sh("lonely", "ls /sys/class/net | tr '\\n' ' '"); strings.TrimSpace(got) != "lo" {
			t.Fatalf("opted-out guest interfaces: %q", got)
		}
		if err := d.c.DeleteInstance(ctx, "lonely", true); err != nil {
			t.Fatal(err)
		}
	})

	var forkIP string
	t.Run("fork from running: both answer at once on their own addresses", func(t *testing.T) {
		conn, err := dialIn(topo.host, webIP+":7000")
		if err != nil {
			t.Fatalf("connect to the source's echo server: %v", err)
		}
		defer conn.Close()
		echo(t, conn, "before-fork")
		f, err := d.c.ForkInstance(ctx, "web", api.ForkInstanceRequest{Name: "web-f1", FromRunning: true, TargetState: "Running"})
		if err != nil {
			t.Fatalf("fork: %v", err)
		}
		forkIP = slotIP(t, f)
		if forkIP == webIP {
			t.Fatalf("the fork has its source's address %s", webIP)
		}
		// The first request to each already answers: no wait, no retry.
		for name, ip := range map[string]string{"source": webIP, "fork": forkIP} {
			if got, err := httpGetIn(topo.host, "http://"+ip+":80/"); err != nil || got != guestPage {
				t.Errorf("%s at %s right after the fork: %q %v", name, ip, got, err)
			}
		}
		echo(t, conn, "after-fork") // the connection to the source survived
		if got := strings.TrimSpace(guestAddrs(d, "web-f1")); got != guestSees {
			t.Fatalf("fork's guest addresses %q, want %q (nothing changed inside it)", got, guestSees)
		}
		if got := d.sh("web-f1", "wget -qO- http://"+outsideIP+":8080/"); got != outsidePage {
			t.Fatalf("fork fetched %q", got)
		}
	})

	t.Run("two guests cannot reach each other", func(t *testing.T) {
		// Dropped, not refused: the connection attempt hangs until
		// timeout kills it (busybox wget -T crashes in this guest).
		out := d.sh("web-f1", "timeout 3 wget -qO- http://"+webIP+":80/ 2>&1; echo rc=$?")
		if !strings.HasSuffix(out, "rc=143") {
			t.Fatalf("the fork reaching its source's slot: %q, want it to hang until killed (rc=143)", out)
		}
		// The same request from the host (the gateway) answers.
		if got, err := httpGetIn(topo.host, "http://"+webIP+":80/"); err != nil || got != guestPage {
			t.Fatalf("GET %s from the host: %q %v", webIP, got, err)
		}
	})

	t.Run("two guests that both allow peers talk; a fork inherits allow_peers", func(t *testing.T) {
		in, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "peer", Cmd: netWorkload,
			Network: &api.NetworkRequest{AllowPeers: true}})
		if err != nil {
			t.Fatal(err)
		}
		peer := d.waitRunning(in.ID)
		peerIP := slotIP(t, peer)
		waitHTTP(t, topo.host, "http://"+peerIP+":80/")
		f, err := d.c.ForkInstance(ctx, "peer", api.ForkInstanceRequest{Name: "peer-f", FromRunning: true, TargetState: "Running"})
		if err != nil {
			t.Fatal(err)
		}
		if !peer.Network.AllowPeers || !f.Network.AllowPeers {
			t.Fatalf("allow_peers: peer %v, its fork %v", peer.Network.AllowPeers, f.Network.AllowPeers)
		}
		// Bounded: were the traffic dropped, wget would hang.
		if got := d.sh("peer-f", "timeout 10 wget -qO- http://"+peerIP+":80/"); got != guestPage {
			t.Fatalf("a peer fetching from its peer's slot %s: %q", peerIP, got)
		}
		// Both sides must allow it: web does not.
		if out := d.sh("peer", "timeout 3 wget -qO- http://"+webIP+":80/ 2>&1; echo rc=$?"); !strings.HasSuffix(out, "rc=143") {
			t.Fatalf("a peer reaching a guest that does not allow peers: %q, want it to hang until killed (rc=143)", out)
		}
		for _, n := range []string{"peer-f", "peer"} {
			if err := d.c.DeleteInstance(ctx, n, true); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("fork from standby; standby/restore and stop/start keep addresses", func(t *testing.T) {
		if _, err := d.c.StandbyInstance(ctx, "web"); err != nil {
			t.Fatal(err)
		}
		f, err := d.c.ForkInstance(ctx, "web", api.ForkInstanceRequest{Name: "web-f2", TargetState: "Running"})
		if err != nil {
			t.Fatalf("fork from standby: %v", err)
		}
		f2IP := slotIP(t, f)
		r, err := d.c.RestoreInstance(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		if ip := slotIP(t, r); ip != webIP {
			t.Fatalf("restore changed the address: %s → %s", webIP, ip)
		}
		for _, ip := range []string{webIP, f2IP, forkIP} {
			if ip == f2IP && (ip == webIP || ip == forkIP) {
				t.Fatalf("addresses not distinct: %s %s %s", webIP, forkIP, f2IP)
			}
			if got, err := httpGetIn(topo.host, "http://"+ip+":80/"); err != nil || got != guestPage {
				t.Errorf("GET %s: %q %v", ip, got, err)
			}
		}
		if got := strings.TrimSpace(guestAddrs(d, "web-f2")); got != guestSees {
			t.Fatalf("standby fork's guest addresses %q", got)
		}
		if _, err := d.c.StopInstance(ctx, "web-f1"); err != nil {
			t.Fatal(err)
		}
		s, err := d.c.StartInstance(ctx, "web-f1")
		if err != nil {
			t.Fatal(err)
		}
		s = d.waitRunning(s.ID)
		if ip := slotIP(t, s); ip != forkIP {
			t.Fatalf("stop/start changed the address: %s → %s", forkIP, ip)
		}
		waitHTTP(t, topo.host, "http://"+forkIP+":80/")
	})

	t.Run("daemon SIGKILL and restart keep every slot; delete releases", func(t *testing.T) {
		before := map[string]string{}
		list, _ := d.c.ListInstances(ctx, client.ListOptions{})
		for _, in := range list {
			before[in.Name] = slotIP(t, in)
		}
		slots := slotRecords(d)
		d.kill9()
		d.start()
		list, _ = d.c.ListInstances(ctx, client.ListOptions{})
		for _, in := range list {
			if ip := slotIP(t, in); ip != before[in.Name] {
				t.Errorf("%s: address %s before the restart, %s after", in.Name, before[in.Name], ip)
			}
		}
		if n := slotRecords(d); n != slots {
			t.Errorf("%d slot records after the restart, %d before", n, slots)
		}
		if got, err := httpGetIn(topo.host, "http://"+webIP+":80/"); err != nil || got != guestPage {
			t.Errorf("web after the restart: %q %v", got, err)
		}
		if got := d.sh("web", "wget -qO- http://"+outsideIP+":8080/"); got != outsidePage {
			t.Errorf("web fetched %q after the restart", got)
		}
		// An adopted VM parks and restores with its NIC (the adopting
		// daemon describes the NIC it attached to).
		if _, err := d.c.StandbyInstance(ctx, "web"); err != nil {
			t.Fatal(err)
		}
		if r, err := d.c.RestoreInstance(ctx, "web"); err != nil || slotIP(t, r) != webIP {
			t.Fatalf("restore the adopted VM: %v", err)
		}
		if got, err := httpGetIn(topo.host, "http://"+webIP+":80/"); err != nil || got != guestPage {
			t.Errorf("web after standby/restore of the adopted VM: %q %v", got, err)
		}
		if err := d.c.DeleteInstance(ctx, "web-f2", true); err != nil {
			t.Fatal(err)
		}
		if n := slotRecords(d); n != slots-1 {
			t.Errorf("%d slot records after deleting one instance, want %d", n, slots-1)
		}
		if _, err := httpGetIn(topo.host, "http://"+before["web-f2"]+":80/"); err == nil {
			t.Errorf("the deleted fork's address %s still answers", before["web-f2"])
		}
	})
}

// TestNetworkRefusesOverlappingSubnet: a subnet that overlaps a route of
// the daemon's namespace stops the daemon at start, saying why.
func TestNetworkRefusesOverlappingSubnet(t *testing.T) {
	topo := newNetTopo(t)
	dir := t.TempDir()
	cmd := exec.Command("nsenter", "--net="+topo.host, zygoteBin, "serve", "--data-dir", filepath.Join(dir, "data"),
		"--socket", filepath.Join(dir, "s.sock"), "--network", "--subnet", "203.0.113.0/25")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(string(out), "overlaps the existing route 203.0.113.0/24") {
		t.Fatalf("serve with an overlapping subnet: %v\n%s", err, out)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		t.Fatalf("serve was killed: %v", ws)
	}
}

// TestNetworkFailingPlugin: a CNI plugin that fails makes the create fail
// with the plugin's message and leaves no slot behind. The network is an
// operator's conflist whose host-local range has one address: the first
// instance takes it, the second create fails in host-local.
func TestNetworkFailingPlugin(t *testing.T) {
	topo := newNetTopo(t)
	confDir := t.TempDir()
	ipam := t.TempDir()
	conf := `{"cniVersion":"1.0.0","name":"tiny","plugins":[{"type":"bridge","bridge":"zgtiny0","isGateway":true,"ipMasq":true,` +
		`"ipam":{"type":"host-local","ranges":[[{"subnet":"10.98.0.0/30"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":"` + ipam + `"}}]}`
	if err := os.WriteFile(filepath.Join(confDir, "50-tiny.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	d := newNetDaemon(t, topo, "--cni-conf-dir", confDir, "--network-pool", "-1")
	first := d.run("first")
	if ip := first.Network.IP; ip == nil || *ip != "10.98.0.2" || first.Network.Name != "tiny" {
		t.Fatalf("first instance network %+v", first.Network)
	}
	slots := slotRecords(d)
	_, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "second"})
	if err == nil || !strings.Contains(err.Error(), "no IP addresses available") {
		t.Fatalf("create with the range exhausted: %v, want host-local's message", err)
	}
	if _, err := d.c.GetInstance(ctx, "second"); err == nil {
		t.Fatal("the failed instance exists")
	}
	if n := slotRecords(d); n != slots {
		t.Fatalf("%d slot records after the failed create, %d before", n, slots)
	}
	if ents, _ := os.ReadDir(filepath.Join(d.dataDir, "network", "netns")); len(ents) != slots {
		t.Fatalf("%d slot namespaces for %d slots", len(ents), slots)
	}
}

// TestNetworkCrashPoints kills a networked daemon (SIGKILL) in a create
// after its slot was acquired, in a create after its boot, and in a fork
// after the fork took its slot: the next daemon rolls them back, leaves
// exactly one slot per instance, frees the published port, and the
// source keeps its address and answers.
func TestNetworkCrashPoints(t *testing.T) {
	topo := newNetTopo(t)
	d := newNetDaemon(t, topo)
	web := d.run("web", netWorkload...)
	webIP := slotIP(t, web)
	waitHTTP(t, topo.host, "http://"+webIP+":80/")
	publish := []api.PublishedPort{{HostPort: 9090, GuestPort: 80}}
	for _, tc := range []struct {
		point string
		op    func() error
	}{
		{crashpoint.CreateSlotAcquired, func() error {
			_, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "half", Publish: publish})
			return err
		}},
		{crashpoint.CreateBooted, func() error {
			_, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "half", Publish: publish})
			return err
		}},
		{crashpoint.ForkSlotAcquired, func() error {
			_, err := d.c.ForkInstanceBatch(ctx, "web", api.ForkInstanceRequest{NamePrefix: "half", Count: 2, FromRunning: true})
			return err
		}},
	} {
		t.Run(tc.point, func(t *testing.T) {
			d.stop()
			d.start(crashpoint.Env + "=" + tc.point)
			d.waitRunning("web")
			if err := tc.op(); err == nil {
				t.Fatal("the operation succeeded although the daemon was to die in it")
			}
			select {
			case <-d.exited:
			case <-time.After(90 * time.Second):
				t.Fatalf("the daemon did not die at %s", tc.point)
			}
			d.start()
			resumed(t, d, "web") // a fork's crash leaves it parked; the daemon restores it
			in := d.waitRunning("web")
			if ip := slotIP(t, in); ip != webIP {
				t.Fatalf("web's address %s → %s", webIP, ip)
			}
			list, _ := d.c.ListInstances(ctx, client.ListOptions{})
			if len(list) != 1 {
				t.Fatalf("instances after the crash: %v", names(list))
			}
			// The pool's free slots aside, exactly web's slot is owned.
			if owned := ownedSlots(t, d); owned != 1 {
				t.Fatalf("%d owned slots after the crash, want 1 (web's)", owned)
			}
			if got, err := httpGetIn(topo.host, "http://"+webIP+":80/"); err != nil || got != guestPage {
				t.Fatalf("web after the crash: %q %v", got, err)
			}
			// The rolled-back create's published port is free again.
			again, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "again", Publish: publish})
			if err != nil {
				t.Fatalf("publish the rolled-back port: %v", err)
			}
			if err := d.c.DeleteInstance(ctx, again.ID, true); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// ownedSlots counts the slot records with an owner.
func ownedSlots(t *testing.T, d *daemon) int {
	t.Helper()
	dir := filepath.Join(d.dataDir, "network", "slots")
	ents, _ := os.ReadDir(dir)
	n := 0
	for _, e := range ents {
		raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(raw), `"owner":`) {
			n++
		}
	}
	return n
}

func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := fmt.Fprintln(c, msg); err != nil {
		t.Fatalf("echo %q: write: %v", msg, err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != msg {
		t.Fatalf("echo %q: got %q %v", msg, line, err)
	}
}

// waitHTTP waits until url answers from the namespace at ns (a booting
// guest starts its server a moment after its agent is ready).
func waitHTTP(t *testing.T, ns, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := httpGetIn(ns, url)
		if err == nil && got == guestPage {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %q %v", url, got, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
