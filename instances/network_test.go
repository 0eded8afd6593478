package instances_test

import (
	"errors"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/agentproto"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/instances/instancestest"
	"github.com/zygote/zygote/internal/testutil"
)

// The slot rules of the manager, over the fake driver and a fake network
// (the real slots, with real VMs, are in e2e/network_test.go): an
// instance keeps its address for life, a fork gets its own, delete
// releases it, the guest always sees the fixed address.

func ipOf(t *testing.T, h *instancestest.Harness, ref string) string {
	t.Helper()
	v := mustGet(t, h, ref)
	if !v.Network.Enabled || v.Network.IP == "" || v.Network.MAC != agentproto.GuestMAC || v.Network.Name == "" {
		t.Fatalf("%s network = %+v", ref, v.Network)
	}
	return v.Network.IP
}

func guestAddr(t *testing.T, h *instancestest.Harness, ref string) string {
	t.Helper()
	out, _ := execOut(t, h, ref, "ipaddr")
	return strings.TrimSpace(out)
}

func TestNetworkSlotLifecycle(t *testing.T) {
	h := instancestest.NewNetworked(t, "", instancestest.Clone)
	create(t, h, "web")
	ip := ipOf(t, h, "web")
	if got := guestAddr(t, h, "web"); got != agentproto.GuestCIDR {
		t.Fatalf("guest configured with %q, want %s", got, agentproto.GuestCIDR)
	}
	same := func(step string) {
		t.Helper()
		if got := ipOf(t, h, "web"); got != ip {
			t.Fatalf("after %s: address %s, was %s", step, got, ip)
		}
	}
	if _, err := h.M.Standby(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	same("standby")
	if _, err := h.M.Restore(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	same("restore")
	if _, err := h.M.Stop(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	same("stop")
	if _, err := h.M.Start(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	h.WaitRunning("web")
	same("start")
	if got := guestAddr(t, h, "web"); got != agentproto.GuestCIDR {
		t.Fatalf("after a start the guest is configured with %q", got)
	}

	// Forks from running and from standby: a new address each, the same
	// guest address, the source's unchanged.
	f1, err := h.M.Fork(ctx, "web", instances.ForkRequest{Name: "f1", FromRunning: true, TargetState: instances.StateRunning})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.M.Standby(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	f2, err := h.M.Fork(ctx, "web", instances.ForkRequest{Name: "f2", TargetState: instances.StateRunning})
	if err != nil {
		t.Fatal(err)
	}
	same("forks")
	ips := []string{ip, ipOf(t, h, "f1"), ipOf(t, h, "f2")}
	if uniq := slices.Compact(slices.Sorted(slices.Values(ips))); len(uniq) != 3 {
		t.Fatalf("source and forks share addresses: %v", ips)
	}
	if f1[0].Network.IP == "" || f2[0].Network.IP == "" {
		t.Fatalf("the fork responses carry no address: %+v %+v", f1[0].Network, f2[0].Network)
	}
	for _, f := range []string{"f1", "f2"} {
		if got := guestAddr(t, h, f); got != agentproto.GuestCIDR {
			t.Fatalf("fork %s's guest has %q, want %s unchanged", f, got, agentproto.GuestCIDR)
		}
	}

	// A fork of a snapshot (its manifest says the machine has a NIC) gets
	// its own address too, and the snapshot holds none.
	snap, err := h.M.CreateSnapshot(ctx, "f2", instances.SnapshotRequest{Kind: instances.SnapshotStandby, Name: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Spec.Network {
		t.Fatalf("snapshot spec %+v: no NIC", snap.Spec)
	}
	if _, err := h.M.ForkSnapshot(ctx, snap.ID, instances.ForkRequest{Name: "f3", TargetState: instances.StateRunning}); err != nil {
		t.Fatal(err)
	}
	if got := ipOf(t, h, "f3"); slices.Contains(ips, got) {
		t.Fatalf("the snapshot's fork has %s, already in use (%v)", got, ips)
	}
	if got := guestAddr(t, h, "f3"); got != agentproto.GuestCIDR {
		t.Fatalf("snapshot fork's guest has %q", got)
	}
	if err := h.M.Delete(ctx, "f3", true); err != nil {
		t.Fatal(err)
	}

	// A restart keeps every slot; a slot whose instance is gone goes.
	h.Net.Acquire(ctx, "ghostaaaaaaaaaaaaaaaaaaa", instances.NetOptions{})
	h.Restart()
	same("restart")
	if owners := h.Net.Owners(); len(owners) != 3 || slices.Contains(owners, "ghostaaaaaaaaaaaaaaaaaaa") {
		t.Fatalf("slots after the restart: %v", owners)
	}
	// An adopted VM (f1 runs on across the restart) parks with its NIC
	// described, so its restore, which passes the NIC, matches the saved
	// devices.
	h.WaitRunning("f1")
	if _, err := h.M.Standby(ctx, "f1"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.M.Restore(ctx, "f1"); err != nil {
		t.Fatalf("restore of an adopted networked VM's standby: %v", err)
	}
	if got := guestAddr(t, h, "f1"); got != agentproto.GuestCIDR {
		t.Fatalf("the adopted fork's guest has %q after its restore", got)
	}

	for _, name := range []string{"f1", "f2", "web"} {
		if err := h.M.Delete(ctx, name, true); err != nil {
			t.Fatal(err)
		}
	}
	if owners := h.Net.Owners(); len(owners) != 0 {
		t.Fatalf("slots left after deleting every instance: %v", owners)
	}
}

func TestNetworkFiftyInstancesFiftyAddresses(t *testing.T) {
	h := instancestest.NewNetworked(t, "", instancestest.NoClone)
	seen := map[string]string{}
	for i := range 50 {
		name := "vm-" + string(rune('a'+i/26)) + string(rune('a'+i%26))
		if _, err := h.M.Create(ctx, instances.CreateRequest{Name: name, MemoryBytes: instances.MinMemoryBytes}); err != nil {
			t.Fatal(err)
		}
		ip := ipOf(t, h, name)
		if other, dup := seen[ip]; dup {
			t.Fatalf("%s and %s share %s", name, other, ip)
		}
		seen[ip] = name
	}
	if n := len(h.Net.Owners()); n != 50 {
		t.Fatalf("%d slots for 50 instances", n)
	}
}

func TestNetworkOptOutAndFailures(t *testing.T) {
	h := instancestest.NewNetworked(t, "", instancestest.Clone)

	if _, err := h.M.Create(ctx, instances.CreateRequest{Name: "lonely", NoNetwork: true}); err != nil {
		t.Fatal(err)
	}
	v := h.WaitRunning("lonely")
	if v.Network.Enabled || v.Network.IP != "" || len(h.Net.Owners()) != 0 {
		t.Fatalf("opted out: %+v, slots %v", v.Network, h.Net.Owners())
	}
	if got := guestAddr(t, h, "lonely"); got != "" {
		t.Fatalf("an opted-out guest was given a NIC address %q", got)
	}
	if _, err := h.M.Create(ctx, instances.CreateRequest{Name: "x", NoNetwork: true, Publish: []instances.Port{{HostPort: 80, GuestPort: 80}}}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("publish without network: %v", err)
	}

	// A plugin that fails: the create fails with its message, leaving no
	// slot, no record and no directory.
	h.Net.FailAcquire = errors.New("plugin type=\"bridge\" failed (add): injected")
	before := instanceDirs(t, h)
	_, err := h.M.Create(ctx, instances.CreateRequest{Name: "broken"})
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), `plugin type="bridge" failed (add): injected`) {
		t.Fatalf("create with a failing plugin: %v", err)
	}
	h.Net.FailAcquire = nil
	if _, err := h.M.Get(ctx, "broken"); !errdefs.IsNotFound(err) {
		t.Fatalf("the failed instance exists: %v", err)
	}
	if after := instanceDirs(t, h); !slices.Equal(after, before) {
		t.Fatalf("directories %v after the failed create, %v before", after, before)
	}
	if owners := h.Net.Owners(); len(owners) != 0 {
		t.Fatalf("slots after a failed create: %v", owners)
	}

	// A published host port already taken: 409, nothing left.
	if _, err := h.M.Create(ctx, instances.CreateRequest{Name: "pub", Publish: []instances.Port{{HostPort: 8080, GuestPort: 80}}}); err != nil {
		t.Fatal(err)
	}
	_, err = h.M.Create(ctx, instances.CreateRequest{Name: "pub2", Publish: []instances.Port{{HostPort: 8080, GuestPort: 81}}})
	if !errdefs.IsConflict(err) {
		t.Fatalf("a taken host port: %v, want a conflict", err)
	}
	if _, err := h.M.Get(ctx, "pub2"); !errdefs.IsNotFound(err) {
		t.Fatalf("the refused instance exists: %v", err)
	}
	if v := mustGet(t, h, "pub"); len(v.Network.Publish) != 1 || v.Network.Publish[0] != (instances.Port{HostPort: 8080, GuestPort: 80, Protocol: "tcp"}) {
		t.Fatalf("pub publishes %+v", v.Network.Publish)
	}
	// A fork does not inherit published ports (a host port has one owner).
	if _, err := h.M.Fork(ctx, "pub", instances.ForkRequest{Name: "pubfork", FromRunning: true}); err != nil {
		t.Fatal(err)
	}
	if v := mustGet(t, h, "pubfork"); len(v.Network.Publish) != 0 || v.Network.IP == "" {
		t.Fatalf("fork network %+v", v.Network)
	}
	// A fork whose slot cannot be had fails whole: no fork, no slot.
	owners := h.Net.Owners()
	h.Net.FailAcquire = errors.New("injected: no address left")
	if _, err := h.M.Fork(ctx, "pub", instances.ForkRequest{NamePrefix: "nf", Count: 2, FromRunning: true}); err == nil || !strings.Contains(err.Error(), "no address left") {
		t.Fatalf("fork without a slot: %v", err)
	}
	h.Net.FailAcquire = nil
	if got := h.Net.Owners(); !slices.Equal(got, owners) {
		t.Fatalf("slots %v after the failed fork, %v before", got, owners)
	}
	if _, err := h.M.Get(ctx, "nf-1"); !errdefs.IsNotFound(err) {
		t.Fatalf("a fork of the failed call exists: %v", err)
	}
	h.WaitRunning("pub") // the source runs again
}

// TestNetworkAllowPeersInherited: allow_peers reaches the slot; a fork
// (from running, from standby, of a snapshot) inherits it, also after a
// restart; the default is isolated; allow_peers without networking is
// refused.
func TestNetworkAllowPeersInherited(t *testing.T) {
	h := instancestest.NewNetworked(t, "", instancestest.Clone)
	if _, err := h.M.Create(ctx, instances.CreateRequest{Name: "peer", AllowPeers: true}); err != nil {
		t.Fatal(err)
	}
	create(t, h, "alone")
	h.WaitRunning("peer")
	check := func(ref string, want bool) {
		t.Helper()
		v := mustGet(t, h, ref)
		if v.Network.AllowPeers != want || h.Net.AllowsPeers(v.ID) != want || v.Spec.AllowPeers != want {
			t.Fatalf("%s: shown %v, slot %v, spec %v; want %v", ref, v.Network.AllowPeers, h.Net.AllowsPeers(v.ID), v.Spec.AllowPeers, want)
		}
	}
	check("peer", true)
	check("alone", false)
	if _, err := h.M.Fork(ctx, "peer", instances.ForkRequest{Name: "f1", FromRunning: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.M.Fork(ctx, "alone", instances.ForkRequest{Name: "f2", FromRunning: true}); err != nil {
		t.Fatal(err)
	}
	check("f1", true)
	check("f2", false)
	snap, err := h.M.CreateSnapshot(ctx, "f1", instances.SnapshotRequest{Kind: instances.SnapshotStandby, Name: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Spec.AllowPeers {
		t.Fatalf("the snapshot's spec lost allow_peers: %+v", snap.Spec)
	}
	if _, err := h.M.ForkSnapshot(ctx, snap.ID, instances.ForkRequest{Name: "f3", TargetState: instances.StateRunning}); err != nil {
		t.Fatal(err)
	}
	check("f3", true)
	h.Restart()
	check("f1", true)
	check("alone", false)
	if _, err := h.M.Create(ctx, instances.CreateRequest{Name: "x", NoNetwork: true, AllowPeers: true}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("allow_peers without network: %v", err)
	}
}

// TestNetworkedImageSharingForks: where images, sharing forks and
// networking meet. An image instance with a network boots with its two
// disks and the NIC; a sharing fork of it owns its overlay, shares the
// root disk and the memory file, and gets its own address with the
// guest's unchanged; both park and restore with every device, also once
// adopted by a restarted daemon; deleting them frees every slot.
func TestNetworkedImageSharingForks(t *testing.T) {
	testutil.RequirePrivileged(t, "formatting overlay disks", "mkfs.ext4")
	dataDir := t.TempDir()
	imgs := newFakeImages(t, dataDir)
	h := instancestest.NewWith(t, dataDir, instancestest.Clone, instancestest.Options{Images: imgs, Net: instancestest.NewFakeNetwork()})
	app, err := h.M.Create(ctx, instances.CreateRequest{Name: "app", Image: "registry.test/app:1", OverlayBytes: 64 << 20,
		Publish: []instances.Port{{HostPort: 8080, GuestPort: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	h.WaitRunning("app")
	devices := func(ref string) {
		t.Helper()
		v := mustGet(t, h, ref)
		spec := h.VM(v.ID).Spec()
		if len(spec.Disks) != 2 || spec.Disks[0].Serial != agentproto.RootDiskSerial || spec.Disks[1].Serial != agentproto.OverlayDiskSerial ||
			spec.NIC == nil || spec.NIC.MAC != agentproto.GuestMAC {
			t.Fatalf("%s's VM has disks %+v and NIC %+v, want root, overlay and the NIC", ref, spec.Disks, spec.NIC)
		}
		if got := guestAddr(t, h, ref); got != agentproto.GuestCIDR {
			t.Fatalf("%s's guest has %q, want %s", ref, got, agentproto.GuestCIDR)
		}
	}
	devices("app")
	ip := ipOf(t, h, "app")

	f := fork(t, h, "app", instances.ForkRequest{Name: "app-2", FromRunning: true, Memory: instances.MemoryShared,
		TargetState: instances.StateRunning})
	h.WaitRunning("app-2")
	devices("app-2")
	if f.Memory != instances.MemoryShared || f.Spec.ImageDigest != imgs.img.Digest {
		t.Fatalf("fork: memory %q, image %q", f.Memory, f.Spec.ImageDigest)
	}
	if got := ipOf(t, h, "app-2"); got == ip {
		t.Fatalf("the fork has its source's address %s", ip)
	}
	if n := mustGet(t, h, "app-2").Network; len(n.Publish) != 0 {
		t.Fatalf("the fork inherited published ports %+v", n.Publish)
	}
	dir, fdir := filepath.Join(dataDir, "instances", app.ID), filepath.Join(dataDir, "instances", f.ID)
	if inode(t, filepath.Join(fdir, "rootfs.ext4")) != inode(t, imgs.disk) ||
		inode(t, filepath.Join(fdir, "overlay.ext4")) == inode(t, filepath.Join(dir, "overlay.ext4")) {
		t.Fatal("the fork does not share the image's root disk, or shares its source's overlay")
	}

	for _, restart := range []bool{false, true} {
		if restart {
			h.Restart()
		}
		for _, ref := range []string{"app", "app-2"} {
			if mustGet(t, h, ref).State != instances.StateStandby {
				h.WaitRunning(ref)
				if _, err := h.M.Standby(ctx, ref); err != nil {
					t.Fatalf("standby %s (restart %v): %v", ref, restart, err)
				}
			}
			if _, err := h.M.Restore(ctx, ref); err != nil {
				t.Fatalf("restore %s (restart %v): %v", ref, restart, err)
			}
			h.WaitRunning(ref)
			devices(ref)
		}
	}
	if got := ipOf(t, h, "app"); got != ip {
		t.Fatalf("the source's address went from %s to %s", ip, got)
	}
	for _, ref := range []string{"app-2", "app"} {
		if err := h.M.Delete(ctx, ref, true); err != nil {
			t.Fatal(err)
		}
	}
	if owners := h.Net.Owners(); len(owners) != 0 {
		t.Fatalf("slots left after deleting both: %v", owners)
	}
}

// phaseCounts is how many observations zygote_fork_phase_seconds holds
// per phase.
func phaseCounts(t *testing.T, h *instancestest.Harness) map[string]uint64 {
	t.Helper()
	mfs, err := h.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "zygote_fork_phase_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "phase" {
					got[lp.GetValue()] = m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return got
}

// TestForkPhaseMetrics: each fork records its copy, its restore and, when
// networked, its slot and its first TAP open (what networking adds to a
// fork); a fork without network records no network phase, and neither
// does a later restore of a fork.
func TestForkPhaseMetrics(t *testing.T) {
	h := instancestest.NewNetworked(t, "", instancestest.Clone)
	create(t, h, "net")
	if _, err := h.M.Create(ctx, instances.CreateRequest{Name: "plain", NoNetwork: true}); err != nil {
		t.Fatal(err)
	}
	h.WaitRunning("plain")
	fork(t, h, "plain", instances.ForkRequest{Name: "pf", FromRunning: true, TargetState: instances.StateRunning})
	if got := phaseCounts(t, h); got["copy"] != 1 || got["restore"] != 1 || got["network_slot"] != 0 || got["network_tap"] != 0 {
		t.Fatalf("phases after a fork without network: %v", got)
	}
	if _, err := h.M.Fork(ctx, "net", instances.ForkRequest{NamePrefix: "nf", Count: 2, FromRunning: true, TargetState: instances.StateRunning}); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"copy": 3, "restore": 3, "network_slot": 2, "network_tap": 2}
	if got := phaseCounts(t, h); !maps.Equal(got, want) {
		t.Fatalf("phases after two networked forks: %v, want %v", got, want)
	}
	if _, err := h.M.Standby(ctx, "nf-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.M.Restore(ctx, "nf-1"); err != nil {
		t.Fatal(err)
	}
	if got := phaseCounts(t, h); !maps.Equal(got, want) {
		t.Fatalf("phases after a later restore of a fork: %v, want %v", got, want)
	}
}
