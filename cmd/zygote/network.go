package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/network"
)

// networkConfig is `zygote serve`'s networking flags.
type networkConfig struct {
	enabled         bool
	confDir, subnet string
	binDirs, dns    []string
	poolSize        int
	cleanup         bool
}

func (c *networkConfig) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	// Off by default: a daemon started on a host's own namespace with
	// networking would add a bridge and NAT rules there and give guests
	// egress to wherever the host reaches; turning that on is the
	// operator's decision (docs/network.md).
	f.BoolVar(&c.enabled, "network", false, "give VMs a network: a CNI slot each (address, published ports; instances opt out with network.enabled false); without it VMs have only lo")
	f.StringVar(&c.confDir, "cni-conf-dir", "", "CNI network configs (default <data-dir>/network/net.d; zygote writes its default network there when it holds none)")
	f.StringSliceVar(&c.binDirs, "cni-bin-dir", nil, "CNI plugin directories (default "+strings.Join(network.DefaultBinDirs, ",")+")")
	f.StringVar(&c.subnet, "subnet", network.DefaultSubnet, "subnet of zygote's default CNI network; start fails if a host route overlaps it")
	f.StringSliceVar(&c.dns, "dns", nil, "DNS servers for guests (default: the host's non-loopback nameservers from /etc/resolv.conf)")
	f.IntVar(&c.poolSize, "network-pool", network.DefaultPoolSize, "ready network slots kept for fast forks (negative: none)")
	f.BoolVar(&c.cleanup, "cleanup-network", false, "remove every slot, rule and bridge zygote's networking made, then exit (the daemon must not run)")
}

func (c networkConfig) managerConfig(dataDir string, log *slog.Logger) network.Config {
	return network.Config{
		StateDir: filepath.Join(dataDir, "network"), ConfDir: c.confDir, BinDirs: c.binDirs,
		Subnet: c.subnet, PoolSize: c.poolSize, Logger: log,
	}
}

// newNetwork builds the daemon's networking, or nil when it is off.
func newNetwork(ctx context.Context, cfg serveConfig, log *slog.Logger) (instances.Networker, []string, func(), error) {
	if !cfg.net.enabled {
		log.Info("networking is off (zygote serve --network turns it on): VMs have only lo")
		return nil, nil, func() {}, nil
	}
	nm, err := network.New(ctx, cfg.net.managerConfig(cfg.dataDir, log))
	if err != nil {
		return nil, nil, nil, err
	}
	dns := cfg.net.dns
	if len(dns) == 0 {
		dns = hostNameservers("/etc/resolv.conf")
	}
	for _, s := range dns {
		if net.ParseIP(s) == nil {
			nm.Close()
			return nil, nil, nil, fmt.Errorf("--dns %q: not an IP address", s)
		}
	}
	return networker{nm}, dns, func() { nm.Close() }, nil
}

// cleanupNetwork is `zygote serve --cleanup-network`.
func cleanupNetwork(ctx context.Context, cfg serveConfig, log *slog.Logger) error {
	if err := network.Cleanup(ctx, cfg.net.managerConfig(cfg.dataDir, log)); err != nil {
		return err
	}
	log.Info("network cleaned up: every slot, rule and bridge zygote made is gone", "state_dir", filepath.Join(cfg.dataDir, "network"))
	return nil
}

// hostNameservers reads the non-loopback nameservers of a resolv.conf (a
// loopback resolver on the host is not reachable from a guest).
func hostNameservers(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		if ip := net.ParseIP(fields[1]); ip != nil && !ip.IsLoopback() && ip.To4() != nil {
			out = append(out, ip.String())
		}
	}
	return out
}

// networker adapts *network.Manager to instances.Networker.
type networker struct{ m *network.Manager }

var _ instances.Networker = networker{}

func (n networker) Acquire(ctx context.Context, owner string, o instances.NetOptions) (instances.NetSlot, error) {
	opts := network.SlotOptions{AllowPeers: o.AllowPeers}
	for _, p := range o.Publish {
		opts.Publish = append(opts.Publish, network.Port{HostPort: p.HostPort, GuestPort: p.GuestPort, Protocol: network.Protocol(p.Protocol)})
	}
	s, err := n.m.Acquire(ctx, owner, opts)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (n networker) Get(owner string) (instances.NetSlot, error) {
	s, err := n.m.Get(owner)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (n networker) Release(ctx context.Context, owner string) error { return n.m.Release(ctx, owner) }

func (n networker) Reconcile(ctx context.Context, live map[string]bool) error {
	return n.m.Reconcile(ctx, live)
}

func (n networker) Stats(owner string) (instances.NetStats, error) {
	st, err := n.m.Stats(owner)
	return instances.NetStats{RxBytes: st.RxBytes, TxBytes: st.TxBytes}, err
}

// networkFlags is the network object of `zygote run --no-network
// --allow-peers` (nil: the daemon's default, networked and isolated).
// Both together reach the daemon, which refuses them (400).
func networkFlags(noNetwork, allowPeers bool) *api.NetworkRequest {
	if !noNetwork && !allowPeers {
		return nil
	}
	n := &api.NetworkRequest{AllowPeers: allowPeers}
	if noNetwork {
		off := false
		n.Enabled = &off
	}
	return n
}

// parsePublish reads `--publish HOST:GUEST[/PROTO]` flags.
func parsePublish(specs []string) ([]api.PublishedPort, error) {
	var out []api.PublishedPort
	for _, s := range specs {
		ports, proto, _ := strings.Cut(s, "/")
		host, guest, ok := strings.Cut(ports, ":")
		hp, err1 := strconv.Atoi(host)
		gp, err2 := strconv.Atoi(guest)
		if !ok || err1 != nil || err2 != nil || (proto != "" && proto != "tcp" && proto != "udp") {
			return nil, fmt.Errorf("--publish %q: want HOST_PORT:GUEST_PORT[/tcp|/udp], e.g. 8080:80", s)
		}
		out = append(out, api.PublishedPort{HostPort: hp, GuestPort: gp, Protocol: proto})
	}
	return out, nil
}
