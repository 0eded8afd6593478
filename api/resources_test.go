package api_test

import (
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/instances/instancestest"
)

// newNetEnv is newEnv with networking (a fake network: addresses without
// slots; the real ones are tested in e2e).
func newNetEnv(t *testing.T) *env {
	h := instancestest.NewNetworked(t, "", instancestest.Clone)
	srv := api.NewServer(api.ServerConfig{Manager: h.M})
	sc := newSpecChecker(t)
	ts := httptest.NewServer(sc.wrap(srv.Handler()))
	t.Cleanup(ts.Close)
	c, err := client.New(ts.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	return &env{h: h, c: c, url: ts.URL}
}

func TestNetworkFieldsOverHTTP(t *testing.T) {
	e := newNetEnv(t)
	on := true
	in, err := e.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "web", Size: "64MB", Network: &api.NetworkRequest{Enabled: &on},
		Publish: []api.PublishedPort{{HostPort: 8080, GuestPort: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	n := in.Network
	if !n.Enabled || n.IP == nil || *n.IP == "" || n.MAC == nil || *n.MAC != "02:5a:79:67:00:02" || n.Name != "fake" ||
		len(n.Publish) != 1 || n.Publish[0] != (api.PublishedPort{HostPort: 8080, GuestPort: 80, Protocol: "tcp"}) {
		t.Fatalf("network = %+v", n)
	}
	_, err = e.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "web2", Size: "64MB", Publish: []api.PublishedPort{{HostPort: 8080, GuestPort: 80}}})
	var se *api.StatusError
	if !errors.As(err, &se) || se.Status != 409 {
		t.Fatalf("a taken host port: %v, want 409", err)
	}
	off := false
	lonely, err := e.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "lonely", Size: "64MB", Network: &api.NetworkRequest{Enabled: &off}})
	if err != nil || lonely.Network.Enabled || lonely.Network.IP != nil || lonely.Network.MAC != nil {
		t.Fatalf("opted out: %+v %v", lonely.Network, err)
	}
	f, err := e.c.ForkInstance(ctx, "web", api.ForkInstanceRequest{Name: "fork", FromRunning: true})
	if err != nil || f.Network.IP == nil || *f.Network.IP == *n.IP || len(f.Network.Publish) != 0 {
		t.Fatalf("fork network %+v %v (source %s)", f.Network, err, *n.IP)
	}
}

// TestNetworkAllowPeersOverHTTP: network.allow_peers (a zygote
// extension) reaches the slot, shows on the instance, and is inherited by
// a fork; an instance without it, or opted out of networking, shows
// false; allow_peers with networking off is 400.
func TestNetworkAllowPeersOverHTTP(t *testing.T) {
	e := newNetEnv(t)
	in, err := e.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "peer", Size: "64MB", Network: &api.NetworkRequest{AllowPeers: true}})
	if err != nil {
		t.Fatal(err)
	}
	if !in.Network.AllowPeers || !e.h.Net.AllowsPeers(in.ID) {
		t.Fatalf("allow_peers not applied: shown %+v, slot allows peers %v", in.Network, e.h.Net.AllowsPeers(in.ID))
	}
	plain, err := e.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "plain", Size: "64MB"})
	if err != nil || plain.Network.AllowPeers || e.h.Net.AllowsPeers(plain.ID) {
		t.Fatalf("an instance without allow_peers: %+v %v", plain.Network, err)
	}
	f, err := e.c.ForkInstance(ctx, "peer", api.ForkInstanceRequest{Name: "peerfork", FromRunning: true})
	if err != nil || !f.Network.AllowPeers || !e.h.Net.AllowsPeers(f.ID) || f.Network.IP == nil || *f.Network.IP == *in.Network.IP {
		t.Fatalf("the fork of a peer: %+v %v", f.Network, err)
	}
	got, err := e.c.GetInstance(ctx, "peerfork")
	if err != nil || !got.Network.AllowPeers {
		t.Fatalf("GET of the fork: %+v %v", got.Network, err)
	}
	off := false
	_, err = e.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "x", Size: "64MB", Network: &api.NetworkRequest{Enabled: &off, AllowPeers: true}})
	var se *api.StatusError
	if !errors.As(err, &se) || se.Status != 400 {
		t.Fatalf("allow_peers with networking off: %v, want 400", err)
	}
}

func TestStatsAndResources(t *testing.T) {
	e := newNetEnv(t)
	web := e.run(t, "web")
	if _, err := e.c.WaitForState(ctx, "web", "Running", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	st, err := e.c.InstanceStats(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if st.InstanceID != web.ID || st.InstanceName != "web" || st.AllocatedMemoryBytes != 64<<20 || st.AllocatedVCPUs != 1 ||
		st.MemoryUtilizationRatio == nil {
		t.Fatalf("stats = %+v", st)
	}
	if _, err := e.c.InstanceStats(ctx, "nope"); !errors.As(err, new(*api.StatusError)) {
		t.Fatalf("stats of a missing instance: %v", err)
	}
	if _, err := e.c.StandbyInstance(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if st, err := e.c.InstanceStats(ctx, "web"); err != nil || st.MemoryRSSBytes != 0 || st.CPUSeconds != 0 {
		t.Fatalf("stats of a Standby instance (no VMM): %+v %v", st, err)
	}
	e.run(t, "db")
	res, err := e.c.Resources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.CPU.Capacity < 1 || res.CPU.Allocated != 1 || res.Memory.Capacity <= 0 || res.Memory.Allocated != 64<<20 ||
		res.Disk.Capacity <= 0 || res.NetworkSlots != 2 || len(res.Allocations) != 1 || res.Allocations[0].InstanceName != "db" {
		t.Fatalf("resources = %+v", res)
	}
}
