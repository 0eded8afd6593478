package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
)

// TestTAPIsTheGuestLink checks the production path QEMU gets: a TAP in
// the slot with the gateway's address and MAC, forwarding on, and an fd
// that opens (again, after a close: standby/restore) on that TAP.
func TestTAPIsTheGuestLink(t *testing.T) {
	upstreamNS(t)
	m, _ := testManager(t, nil)
	s := acquire(t, m, "vm", SlotOptions{})
	err := withHandles(s.NetNSPath(), func(h *netlink.Handle, _ *nftablesConn) error {
		tap, err := h.LinkByName(TAPName)
		if err != nil {
			return err
		}
		if tap.Type() != "tuntap" || tap.Attrs().HardwareAddr.String() != GatewayMAC || tap.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("tap: type %s mac %s flags %v", tap.Type(), tap.Attrs().HardwareAddr, tap.Attrs().Flags)
		}
		addrs, err := h.AddrList(tap, netlink.FAMILY_V4)
		if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != GatewayIP+"/30" {
			return fmt.Errorf("tap addresses %v, %v", addrs, err)
		}
		eth, err := h.LinkByName(SlotIfName)
		if err != nil {
			return err
		}
		addrs, _ = h.AddrList(eth, netlink.FAMILY_V4)
		if len(addrs) != 1 || !addrs[0].IP.Equal(s.IP()) {
			return fmt.Errorf("%s addresses %v, slot reports %s", SlotIfName, addrs, s.IP())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var fwd []byte
	if err := inNS(s.NetNSPath(), func() (err error) {
		fwd, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		return err
	}); err != nil || strings.TrimSpace(string(fwd)) != "1" {
		t.Fatalf("ip_forward in slot: %q, %v", fwd, err)
	}
	for range 2 { // boot, then restore after standby
		f, err := s.OpenTAP()
		if err != nil {
			t.Fatal(err)
		}
		name, flags, err := tapInfo(f)
		f.Close()
		if err != nil || name != TAPName || flags&tapQueueFlags != tapQueueFlags {
			t.Fatalf("TAP fd: name %q flags %#x, %v", name, flags, err)
		}
	}
	if got, _ := m.Get("vm"); !got.IP().Equal(s.IP()) {
		t.Fatalf("address changed after reopening the TAP: %s → %s", s.IP(), got.IP())
	}
}

func TestReleaseFreesEverything(t *testing.T) {
	upstreamNS(t)
	m, cfg := testManager(t, nil)
	s := acquire(t, m, "a", SlotOptions{Publish: []Port{{HostPort: 18100, GuestPort: 80}}})
	if !ipamHolds(t, cfg, s.IP()) {
		t.Fatalf("IPAM holds no reservation for %s", s.IP())
	}
	if err := m.Release(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	if ipamHolds(t, cfg, s.IP()) {
		t.Errorf("address %s still reserved after release", s.IP())
	}
	if _, err := os.Stat(s.NetNSPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace %s left: %v", s.NetNSPath(), err)
	}
	if got := dirEntries(t, cfg.StateDir+"/slots"); len(got) != 0 {
		t.Errorf("records left: %v", got)
	}
	if _, err := m.Get("a"); !errdefs.IsNotFound(err) {
		t.Errorf("Get after release: %v", err)
	}
	if err := m.Release(context.Background(), "a"); err != nil {
		t.Errorf("second Release: %v", err)
	}
	// The host port is free again.
	acquire(t, m, "b", SlotOptions{Publish: []Port{{HostPort: 18100, GuestPort: 80}}})
}

func TestFiftySlotsGetFiftyAddresses(t *testing.T) {
	upstreamNS(t)
	m, cfg := testManager(t, nil)
	seen := map[string]string{}
	for i := range 50 {
		owner := fmt.Sprintf("vm%d", i)
		s := acquire(t, m, owner, SlotOptions{})
		if prev, dup := seen[s.IP().String()]; dup {
			t.Fatalf("%s and %s both got %s", prev, owner, s.IP())
		}
		seen[s.IP().String()] = owner
	}
	if err := m.Reconcile(context.Background(), map[string]bool{}); err != nil {
		t.Fatal(err)
	}
	for ip := range seen {
		if ipamHolds(t, cfg, net.ParseIP(ip)) {
			t.Fatalf("%s still reserved after every owner is gone", ip)
		}
	}
	if got := dirEntries(t, cfg.StateDir+"/netns"); len(got) != 0 {
		t.Fatalf("namespaces left: %v", got)
	}
}

// TestRestartKeepsSlots: a new Manager on the same state dir (a daemon
// restart) finds every slot with its address, its published port and its
// guest's connectivity; Reconcile releases the slots of gone instances.
func TestRestartKeepsSlots(t *testing.T) {
	upstreamNS(t)
	m1, cfg := testManager(t, func(c *Config) { c.PoolSize = 1 })
	a := acquire(t, m1, "a", SlotOptions{Publish: []Port{{HostPort: 18110, GuestPort: guestPort}}})
	b := acquire(t, m1, "b", SlotOptions{})
	ga := testGuest(t, m1, "a")
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}
	m2, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	for _, want := range []*Slot{a, b} {
		got, err := m2.Get(want.Owner())
		if err != nil || !got.IP().Equal(want.IP()) || got.ID() != want.ID() {
			t.Fatalf("after restart %s: %v, %v (was %s %s)", want.Owner(), got, err, want.ID(), want.IP())
		}
	}
	if _, err := m2.Acquire(context.Background(), "c", SlotOptions{Publish: []Port{{HostPort: 18110, GuestPort: 1}}}); !errdefs.IsConflict(err) {
		t.Fatalf("port of a restored slot not reserved: %v", err)
	}
	if err := m2.Reconcile(context.Background(), map[string]bool{"a": true}); err != nil {
		t.Fatal(err)
	}
	if _, err := m2.Get("b"); !errdefs.IsNotFound(err) {
		t.Fatalf("slot of gone instance b: %v", err)
	}
	if ipamHolds(t, cfg, b.IP()) {
		t.Fatalf("b's address %s still reserved", b.IP())
	}
	if _, err := get(ga, "http://"+upstreamHTTP+"/"); err != nil {
		t.Fatalf("guest a → upstream after restart: %v", err)
	}
	if body, err := get("", "http://127.0.0.1:18110/"); err != nil || body != "a" {
		t.Fatalf("published port of a after restart: %q, %v", body, err)
	}
	if st, err := m2.Stats("a"); err != nil || st.RxBytes == 0 || st.TxBytes == 0 {
		t.Fatalf("stats of a: %+v, %v", st, err)
	}
	// Two managers on one state dir: refused.
	if _, err := New(context.Background(), cfg); !errdefs.IsConflict(err) {
		t.Fatalf("second manager on the same state dir: %v", err)
	}
}

// TestRebuildAfterReboot simulates a host reboot under the daemon: every
// slot namespace, the bridge and every iptables rule are gone; the records
// and IPAM reservations on disk are not. Reconcile rebuilds each slot with
// its old address and published port, and releases the slot of an
// instance that is gone (its DEL meets the missing chains too).
func TestRebuildAfterReboot(t *testing.T) {
	upstreamNS(t)
	m, cfg := testManager(t, nil)
	a := acquire(t, m, "a", SlotOptions{Publish: []Port{{HostPort: 18120, GuestPort: guestPort}}})
	b := acquire(t, m, "b", SlotOptions{})
	gone := acquire(t, m, "gone", SlotOptions{})
	m.Close()
	for _, s := range []*Slot{a, b, gone} {
		if err := unix.Unmount(s.NetNSPath(), unix.MNT_DETACH); err != nil {
			t.Fatal(err)
		}
	}
	if err := deleteLink(DefaultBridge); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"nat", "filter"} {
		if out, err := exec.Command("sh", "-c", "iptables -t "+table+" -F && iptables -t "+table+" -X").CombinedOutput(); err != nil {
			t.Fatalf("flush %s: %v\n%s", table, err, out)
		}
	}
	m, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Reconcile(context.Background(), map[string]bool{"a": true, "b": true}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []*Slot{a, b} {
		got, err := m.Get(want.Owner())
		if err != nil || !got.IP().Equal(want.IP()) || !nsAlive(got.NetNSPath()) {
			t.Fatalf("rebuilt slot of %s: %v, %v (was %s)", want.Owner(), got, err, want.IP())
		}
	}
	if _, err := m.Get("gone"); !errdefs.IsNotFound(err) || ipamHolds(t, cfg, gone.IP()) {
		t.Fatalf("slot of the gone instance: %v, address held %v", err, ipamHolds(t, cfg, gone.IP()))
	}
	testGuest(t, m, "a")
	if body, err := get("", "http://127.0.0.1:18120/"); err != nil || body != "a" {
		t.Fatalf("published port after rebuild: %q, %v", body, err)
	}
	gb := testGuest(t, m, "b")
	if _, err := get(gb, "http://"+upstreamHTTP+"/"); err != nil {
		t.Fatalf("guest b → upstream after rebuild: %v", err)
	}
}

func TestSubnetOverlappingARouteIsRefused(t *testing.T) {
	upstreamNS(t)
	// Another network of the host (a veth: this kernel has no dummy links).
	d := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "other0"}, PeerName: "other1"}
	if err := netlink.LinkAdd(d); err != nil {
		t.Fatal(err)
	}
	defer netlink.LinkDel(d)
	if err := netlink.AddrAdd(d, mustAddr("10.77.1.1/24")); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(d); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	_, err := New(context.Background(), Config{StateDir: dir, Subnet: "10.77.0.0/16", PoolSize: -1})
	if !errdefs.IsInvalidArgument(err) {
		t.Fatalf("New with an overlapping subnet: %v", err)
	}
	wantContains(t, err.Error(), "10.77.1.0/24 dev other0")
	wantContains(t, err.Error(), "--subnet")
	if got := dirEntries(t, dir+"/netns"); len(got) != 0 {
		t.Fatalf("slots made: %v", got)
	}
	// The operator fixes the flag: the next start takes it.
	cfg := Config{StateDir: dir, Subnet: "10.78.0.0/16", PoolSize: -1}
	m, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New with a free subnet after a refused one: %v", err)
	}
	defer func(cfg Config) {
		m.Close()
		if err := Cleanup(context.Background(), cfg); err != nil {
			t.Error(err)
		}
	}(cfg)
	if s := acquire(t, m, "a", SlotOptions{}); !strings.HasPrefix(s.IP().String(), "10.78.") {
		t.Fatalf("slot address %s not in the new subnet", s.IP())
	}
	// Changing the subnet while slots exist is refused.
	m.Close()
	cfg.Subnet = "10.79.0.0/16"
	if _, err := New(context.Background(), cfg); !errdefs.IsConflict(err) {
		t.Fatalf("subnet change with live slots: %v", err)
	}
}

// TestFailingPluginLeavesNothing plugs an operator network whose last
// plugin fails at ADD (tuning with a sysctl that does not exist), after
// bridge and host-local succeeded.
func TestFailingPluginLeavesNothing(t *testing.T) {
	upstreamNS(t)
	state := t.TempDir()
	conf := t.TempDir()
	list := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"broken","plugins":[
	  {"type":"bridge","bridge":"zbroken0","isGateway":true,"ipMasq":true,
	   "ipam":{"type":"host-local","ranges":[[{"subnet":"10.91.0.0/24"}]],"dataDir":"%s/ipam"}},
	  {"type":"tuning","sysctl":{"net.ipv4.conf.eth0.no_such_knob":"1"}}]}`, state)
	if err := os.WriteFile(filepath.Join(conf, "50-broken.conflist"), []byte(list), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{StateDir: state, ConfDir: conf, PoolSize: -1}
	m, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		m.Close()
		Cleanup(context.Background(), cfg)
		deleteLink("zbroken0")
	}()
	_, err = m.Acquire(context.Background(), "a", SlotOptions{})
	if err == nil {
		t.Fatal("Acquire succeeded on a failing network")
	}
	wantContains(t, err.Error(), "no_such_knob")
	for _, d := range []string{"netns", "slots"} {
		if got := dirEntries(t, filepath.Join(state, d)); len(got) != 0 {
			t.Errorf("%s left: %v", d, got)
		}
	}
	if ipamHolds(t, cfg, net.ParseIP("10.91.0.2")) {
		t.Error("address 10.91.0.2 still reserved")
	}
	if br, err := netlink.LinkByName("zbroken0"); err == nil {
		links, _ := netlink.LinkList()
		for _, l := range links {
			if l.Attrs().MasterIndex == br.Attrs().Index {
				t.Errorf("veth %s left on the bridge", l.Attrs().Name)
			}
		}
	}
	if _, err := m.Get("a"); !errdefs.IsNotFound(err) {
		t.Errorf("Get after a failed Acquire: %v", err)
	}
}

func TestHostPortTakenIsConflict(t *testing.T) {
	upstreamNS(t)
	m, cfg := testManager(t, nil)
	acquire(t, m, "a", SlotOptions{Publish: []Port{{HostPort: 18130, GuestPort: 80}}})
	l, err := net.Listen("tcp", ":18131")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, c := range []struct {
		name string
		port Port
		want func(error) bool
	}{
		{"published by another slot", Port{HostPort: 18130, GuestPort: 80}, errdefs.IsConflict},
		{"bound by a host process", Port{HostPort: 18131, GuestPort: 80}, errdefs.IsConflict},
		{"bad protocol", Port{HostPort: 18132, GuestPort: 80, Protocol: "sctp"}, errdefs.IsInvalidArgument},
		{"bad port", Port{HostPort: 0, GuestPort: 80}, errdefs.IsInvalidArgument},
	} {
		_, err := m.Acquire(context.Background(), "b", SlotOptions{Publish: []Port{c.port}})
		if !c.want(err) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	// The same port over UDP is another port.
	acquire(t, m, "b", SlotOptions{Publish: []Port{{HostPort: 18130, GuestPort: 80, Protocol: UDP}}})
	if got := dirEntries(t, cfg.StateDir+"/netns"); len(got) != 2 {
		t.Errorf("namespaces after failed acquires: %v (want a's and b's)", got)
	}
	if _, err := m.Acquire(context.Background(), "a", SlotOptions{}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second slot for a: %v", err)
	}
}

func TestPoolServesAcquireAndRefills(t *testing.T) {
	upstreamNS(t)
	m, _ := testManager(t, func(c *Config) { c.PoolSize = 2 })
	pooled := waitPool(t, m, 2)
	s := acquire(t, m, "a", SlotOptions{AllowPeers: true})
	if !pooled[s.ID()] {
		t.Fatalf("slot %s did not come from the pool %v", s.ID(), pooled)
	}
	waitPool(t, m, 2)
	// A slot with published ports is made on the path, not taken from the pool.
	p := acquire(t, m, "b", SlotOptions{Publish: []Port{{HostPort: 18140, GuestPort: guestPort}}})
	if pooled[p.ID()] {
		t.Fatalf("slot with ports %s came from the pool", p.ID())
	}
	// The pooled slot got the options it was acquired with.
	acquire(t, m, "c", SlotOptions{AllowPeers: true})
	gc := testGuest(t, m, "c")
	testGuest(t, m, "a")
	if body, err := get(gc, fmt.Sprintf("http://%s:%d/", s.IP(), guestPort)); err != nil || body != "a" {
		t.Fatalf("pooled peers c → a: %q, %v", body, err)
	}
}

func waitPool(t testing.TB, m *Manager, n int) map[string]bool {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		m.mu.Lock()
		if len(m.free) >= n {
			ids := map[string]bool{}
			for _, r := range m.free {
				ids[r.ID] = true
			}
			m.mu.Unlock()
			return ids
		}
		m.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("pool never reached %d slots", n)
	return nil
}

func TestCleanupRemovesEverything(t *testing.T) {
	upstreamNS(t)
	cfg := Config{StateDir: t.TempDir(), PoolSize: 2}
	m, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := acquire(t, m, "a", SlotOptions{Publish: []Port{{HostPort: 18150, GuestPort: 80}}})
	waitPool(t, m, 2)
	if err := Cleanup(context.Background(), cfg); !errdefs.IsConflict(err) {
		t.Fatalf("Cleanup while a manager runs: %v", err)
	}
	m.Close()
	// A record write that a SIGKILL cut short leaves its temporary (an
	// e2e crash point once did): Cleanup removes it and carries on.
	if err := os.WriteFile(filepath.Join(cfg.StateDir, "slots", "."+a.ID()+".json.123"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(DefaultBridge); err == nil {
		t.Error("bridge left")
	}
	for _, d := range []string{"netns", "slots", "ipam"} {
		if got := dirEntries(t, filepath.Join(cfg.StateDir, d)); len(got) != 0 {
			t.Errorf("%s left: %v", d, got)
		}
	}
	if _, err := os.Stat(filepath.Join(cfg.StateDir, "net.d", defaultConfFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("default conflist left: %v", err)
	}
	rules := iptablesSave(t)
	if strings.Contains(rules, a.ID()) || strings.Contains(rules, a.IP().String()) {
		t.Errorf("host rules of slot %s left:\n%s", a.ID(), rules)
	}
	// The links of the daemon's namespace are back to the topology's.
	links, _ := netlink.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "veth") {
			t.Errorf("link %s left", l.Attrs().Name)
		}
	}
}

// TestConcurrentAcquireRelease runs acquires (pooled and with ports) and
// releases side by side with the pool refilling; run it with -race.
func TestConcurrentAcquireRelease(t *testing.T) {
	upstreamNS(t)
	m, cfg := testManager(t, func(c *Config) { c.PoolSize = 2 })
	errc := make(chan error, 8)
	ips := make(chan string, 32)
	for g := range 8 {
		go func() {
			owner := fmt.Sprintf("vm%d", g)
			var opts SlotOptions
			if g%2 == 0 {
				opts.Publish = []Port{{HostPort: 18300 + g, GuestPort: 80}}
			}
			for range 2 {
				s, err := m.Acquire(context.Background(), owner, opts)
				if err != nil {
					errc <- err
					return
				}
				if err := m.Release(context.Background(), owner); err != nil {
					errc <- err
					return
				}
				ips <- s.IP().String()
			}
			s, err := m.Acquire(context.Background(), owner, opts)
			if err == nil {
				ips <- "held " + s.IP().String()
			}
			errc <- err
		}()
	}
	for range 8 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	held := map[string]bool{}
	for len(ips) > 0 {
		ip := <-ips
		if rest, ok := strings.CutPrefix(ip, "held "); ok {
			if held[rest] {
				t.Fatalf("two live slots share %s", rest)
			}
			held[rest] = true
		}
	}
	if len(m.Slots()) != 8 || len(held) != 8 {
		t.Fatalf("%d owned slots, %d distinct addresses; want 8", len(m.Slots()), len(held))
	}
	m.Close()
	if got := len(dirEntries(t, cfg.StateDir+"/slots")); got < 8 {
		t.Fatalf("%d records after close; want the 8 owned plus the pool", got)
	}
}

// TestReleaseAfterRulesFlushed: someone flushed the host's iptables (a
// firewall reload) under live slots. Release still frees the slot and its
// address although the plugins' chains are gone.
func TestReleaseAfterRulesFlushed(t *testing.T) {
	upstreamNS(t)
	m, cfg := testManager(t, nil)
	s := acquire(t, m, "a", SlotOptions{Publish: []Port{{HostPort: 18160, GuestPort: 80}}})
	for _, table := range []string{"nat", "filter"} {
		if out, err := exec.Command("sh", "-c", "iptables -t "+table+" -F && iptables -t "+table+" -X").CombinedOutput(); err != nil {
			t.Fatalf("flush %s: %v\n%s", table, err, out)
		}
	}
	if err := m.Release(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	if ipamHolds(t, cfg, s.IP()) || nsAlive(s.NetNSPath()) {
		t.Fatalf("after release: address held %v, namespace alive %v", ipamHolds(t, cfg, s.IP()), nsAlive(s.NetNSPath()))
	}
}
