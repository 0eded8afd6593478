package network

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/zygote/zygote/internal/testutil"
)

// The test topology. The test process runs in a namespace of its own
// ("the daemon's"); "the outside" is a second namespace joined to it by a
// veth pair, holding an HTTP server and a TCP echo server on a
// documentation address, and is the daemon's default route. No packet
// leaves these namespaces.
const (
	upstreamIP   = "203.0.113.1"
	daemonIP     = "203.0.113.2"
	upstreamHTTP = upstreamIP + ":8080"
	upstreamEcho = upstreamIP + ":7007"
	guestPort    = 8000
)

var (
	topoOnce sync.Once
	topoErr  error
	topoDir  string
)

// upstreamNS returns the path of the outside namespace, making the
// topology on first use.
func upstreamNS(t testing.TB) string {
	t.Helper()
	testutil.RequirePrivileged(t, "network slots need root, network namespaces, Debian's CNI plugins (apt-get install containernetworking-plugins) and iptables",
		DefaultBinDirs[0]+"/bridge", "iptables")
	if os.Getenv(envInNS) == "" {
		t.Fatal("network tests must run in TestMain's private namespace")
	}
	topoOnce.Do(func() { topoErr = makeTopology() })
	if topoErr != nil {
		t.Fatalf("test topology: %v", topoErr)
	}
	return filepath.Join(topoDir, "upstream")
}

func makeTopology() error {
	dir, err := os.MkdirTemp("", "zygote-nettest-")
	if err != nil {
		return err
	}
	topoDir = dir
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	up := filepath.Join(dir, "upstream")
	if err := createNS(up); err != nil {
		return err
	}
	h, err := netns.GetFromPath(up)
	if err != nil {
		return err
	}
	defer h.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(h)}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth: %w", err)
	}
	l, err := netlink.LinkByName("up0")
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, mustAddr(daemonIP+"/24")); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return err
	}
	if err := netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP(upstreamIP)}); err != nil {
		return fmt.Errorf("default route: %w", err)
	}
	uh, err := netlink.NewHandleAt(h)
	if err != nil {
		return err
	}
	defer uh.Close()
	for _, name := range []string{"lo", "eth0"} {
		l, err := uh.LinkByName(name)
		if err != nil {
			return err
		}
		if name == "eth0" {
			if err := uh.AddrAdd(l, mustAddr(upstreamIP+"/24")); err != nil {
				return err
			}
		}
		if err := uh.LinkSetUp(l); err != nil {
			return err
		}
	}
	httpL, err := listenIn(up, "tcp", upstreamHTTP)
	if err != nil {
		return err
	}
	go http.Serve(httpL, http.HandlerFunc(serveBytes("upstream")))
	echoL, err := listenIn(up, "tcp", upstreamEcho)
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := echoL.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return nil
}

// serveBytes answers "<name>" on /, n zero bytes on /bytes?n=, and the
// byte count of a POST's body.
func serveBytes(name string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			n, _ := io.Copy(io.Discard, r.Body)
			fmt.Fprint(w, n)
			return
		}
		if r.URL.Path != "/bytes" {
			io.WriteString(w, name)
			return
		}
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		buf := make([]byte, 256<<10)
		w.Header().Set("Content-Length", strconv.Itoa(n))
		for n > 0 {
			k := min(n, len(buf))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	}
}

func mustAddr(s string) *netlink.Addr {
	a, err := netlink.ParseAddr(s)
	if err != nil {
		panic(err)
	}
	return a
}

// listenIn opens a listener whose socket lives in the namespace at path
// ("" for the daemon's own).
func listenIn(path, network, addr string) (net.Listener, error) {
	if path == "" {
		return net.Listen(network, addr)
	}
	var l net.Listener
	err := inNS(path, func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// dialIn dials from the namespace at path ("" for the daemon's own).
func dialIn(ctx context.Context, path, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 3 * time.Second}
	if path == "" {
		return d.DialContext(ctx, network, addr)
	}
	var c net.Conn
	err := inNS(path, func() (err error) {
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// clientIn is an HTTP client whose connections start in the namespace at
// path.
func clientIn(path string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialIn(ctx, path, network, addr)
		},
	}}
}

// get fetches url from the namespace at path and returns the body.
func get(path, url string) (string, error) { return getWithin(path, url, 5*time.Second) }

// blocked reports whether a fetch of url from path fails within a second
// (a dropped packet never answers: a short timeout keeps tests quick).
func blocked(path, url string) bool {
	_, err := getWithin(path, url, time.Second)
	return err != nil
}

func getWithin(path, url string, timeout time.Duration) (string, error) {
	resp, err := clientIn(path, timeout).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), nil
}

// testManager starts a Manager on a fresh state dir and removes
// everything it made at the end (Close, then Cleanup).
func testManager(t testing.TB, mod func(*Config)) (*Manager, Config) {
	t.Helper()
	upstreamNS(t)
	cfg := Config{StateDir: t.TempDir(), PoolSize: -1}
	if mod != nil {
		mod(&cfg)
	}
	m, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		m.Close()
		if err := Cleanup(context.Background(), cfg); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	return m, cfg
}

// testGuest is a namespace standing in for a VM (see ConnectTestGuest),
// joined to owner's slot, with an HTTP server on guestPort answering
// owner's name.
func testGuest(t testing.TB, m *Manager, owner string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "guest-"+owner)
	if err := createNS(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeNS(path) })
	if err := m.ConnectTestGuest(owner, path); err != nil {
		t.Fatal(err)
	}
	l, err := listenIn(path, "tcp", fmt.Sprintf(":%d", guestPort))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(serveBytes(owner))}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return path
}

func acquire(t testing.TB, m *Manager, owner string, opts SlotOptions) *Slot {
	t.Helper()
	s, err := m.Acquire(context.Background(), owner, opts)
	if err != nil {
		t.Fatalf("Acquire %s: %v", owner, err)
	}
	return s
}

// ipamHolds reports whether host-local's data dir holds a reservation
// for ip.
func ipamHolds(t testing.TB, cfg Config, ip net.IP) bool {
	t.Helper()
	var found bool
	filepath.WalkDir(cfg.StateDir+"/ipam", func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == ip.String() {
			found = true
		}
		return nil
	})
	return found
}

func dirEntries(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

func wantContains(t testing.TB, got, want string) {
	t.Helper()
	if !strings.Contains(got, want) {
		t.Fatalf("got %q, want it to contain %q", got, want)
	}
}

type nftablesConn = nftables.Conn

func iptablesSave(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("iptables-save").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-save: %v\n%s", err, out)
	}
	return string(out)
}
