package initd

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/zygote/zygote/guest/agentproto"
)

// Network finds the NIC by MAC (waiting for virtio_net to probe it),
// names it, sets its MTU and address, brings it up, adds the default
// route and writes /etc/resolv.conf. Every step replaces what is there,
// so a retried Configure succeeds. Nothing here runs again after a
// restore: every VM and fork has the same guest network.
func (p LinuxProvisioner) Network(cfg agentproto.NetworkConfig) error {
	start := time.Now()
	mac, err := net.ParseMAC(cfg.MAC)
	if err != nil {
		return err
	}
	addr, err := netlink.ParseAddr(cfg.Address)
	if err != nil {
		return fmt.Errorf("address %q: %w", cfg.Address, err)
	}
	link, err := p.findLink(mac)
	if err != nil {
		return err
	}
	if link.Attrs().Name != cfg.Interface {
		if err := netlink.LinkSetDown(link); err != nil {
			return fmt.Errorf("set %s down: %w", link.Attrs().Name, err)
		}
		if err := netlink.LinkSetName(link, cfg.Interface); err != nil {
			return fmt.Errorf("rename %s to %s: %w", link.Attrs().Name, cfg.Interface, err)
		}
		if link, err = netlink.LinkByName(cfg.Interface); err != nil {
			return err
		}
	}
	if err := netlink.LinkSetMTU(link, cfg.MTU); err != nil {
		return fmt.Errorf("set MTU %d on %s: %w", cfg.MTU, cfg.Interface, err)
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("add %s to %s: %w", cfg.Address, cfg.Interface, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", cfg.Interface, err)
	}
	if cfg.Gateway != "" {
		gw := net.ParseIP(cfg.Gateway)
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}); err != nil {
			return fmt.Errorf("default route via %s: %w", cfg.Gateway, err)
		}
	}
	if len(cfg.DNS) > 0 {
		if err := os.WriteFile("/etc/resolv.conf", []byte(ResolvConf(cfg.DNS)), 0o644); err != nil {
			return err
		}
	}
	if p.Log != nil {
		p.Log.Info("network configured", "took", time.Since(start).Round(time.Millisecond), "interface", cfg.Interface, "address", cfg.Address, "gateway", cfg.Gateway, "mtu", cfg.MTU, "dns", cfg.DNS)
	}
	return nil
}

func (p LinuxProvisioner) findLink(mac net.HardwareAddr) (netlink.Link, error) {
	wait := p.DiskWait
	if wait <= 0 {
		wait = 5 * time.Second
	}
	deadline := time.Now().Add(wait)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			if bytes.Equal(l.Attrs().HardwareAddr, mac) {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no network interface with MAC %s (is the VM's NIC missing?)", mac)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
