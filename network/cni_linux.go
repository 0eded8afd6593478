package network

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// runtimeConf is the CNI runtime config of a slot; DEL gets exactly what
// ADD got.
func runtimeConf(rec *record, nsPath string) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: rec.ID, NetNS: nsPath, IfName: SlotIfName}
	if len(rec.Ports) > 0 {
		var pm []map[string]any
		for _, p := range rec.Ports {
			pm = append(pm, map[string]any{"hostPort": p.HostPort, "containerPort": p.GuestPort, "protocol": string(p.Protocol)})
		}
		rt.CapabilityArgs = map[string]any{"portMappings": pm}
	}
	return rt
}

// cniAdd runs ADD for the slot and fills in its address and gateway. The
// plugins run as children of the daemon, in the daemon's namespace (the
// calling goroutine never switched), and act on the slot through CNI_NETNS.
//
// want, when set, asks the IPAM for that address (CNI_ARGS IP=, which
// host-local honours; IgnoreUnknown=1 lets plugins without the argument
// run).
func (m *Manager) cniAdd(ctx context.Context, rec *record, want net.IP) error {
	rt := runtimeConf(rec, rec.NetNS)
	if want != nil {
		rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {"IP", want.String()}}
	}
	res, err := m.cni.AddNetworkList(ctx, m.list, rt)
	if err != nil {
		return fmt.Errorf("CNI ADD %s (network %s): %w", rec.ID, m.list.Name, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return fmt.Errorf("CNI ADD %s: result: %w", rec.ID, err)
	}
	for _, ipc := range r.IPs {
		if ipc.Address.IP.To4() == nil {
			continue
		}
		// The address of the interface inside the slot (the result also
		// lists host-side interfaces; ips point at theirs by index).
		if ipc.Interface != nil && *ipc.Interface < len(r.Interfaces) && r.Interfaces[*ipc.Interface].Sandbox == "" {
			continue
		}
		rec.IP = (&net.IPNet{IP: ipc.Address.IP.To4(), Mask: ipc.Address.Mask}).String()
		if ipc.Gateway != nil {
			rec.Gateway = ipc.Gateway.String()
		}
		return nil
	}
	return fmt.Errorf("CNI ADD %s (network %s) returned no IPv4 address for the slot", rec.ID, m.list.Name)
}

// cniDel runs DEL for the slot. DEL is idempotent in every plugin; with a
// namespace that is gone (host reboot) it runs with an empty CNI_NETNS,
// which makes the plugins release what lives outside it (IPAM, host
// rules).
func (m *Manager) cniDel(ctx context.Context, rec *record) error {
	if m.list == nil {
		return nil // Cleanup with no network config left: nothing can be DELeted
	}
	nsPath := rec.NetNS
	if !nsAlive(nsPath) {
		nsPath = ""
	}
	rt := runtimeConf(rec, nsPath)
	list := m.list
	for {
		err := m.cni.DelNetworkList(ctx, list, rt)
		if err == nil {
			return nil
		}
		i := goneStateFailure(list, err)
		if i < 0 {
			return fmt.Errorf("CNI DEL %s (network %s): %w", rec.ID, m.list.Name, err)
		}
		// The plugin failed only because what it meant to remove is
		// already gone (its iptables chain after a host reboot or a
		// firewall flush: bridge 1.1.1 fails DEL on a missing chain
		// instead of ignoring it). Its own teardown ran up to that point;
		// go on with the plugins before it (DEL walks the list backwards).
		m.log.Warn("CNI DEL: plugin found its state already gone; continuing", "slot", rec.ID, "plugin", list.Plugins[i].Network.Type, "err", err)
		if i == 0 {
			return nil
		}
		next := *list
		next.Plugins = list.Plugins[:i]
		list = &next
	}
}

// goneStateFailure returns the index of the plugin whose DEL failed with
// iptables' "does not exist", or -1 for any other failure. libcni names
// the failing plugin as `plugin type="<type>" failed (delete)`.
func goneStateFailure(list *libcni.NetworkConfigList, err error) int {
	msg := err.Error()
	if !strings.Contains(msg, "does not exist") {
		return -1
	}
	for i := len(list.Plugins) - 1; i >= 0; i-- {
		if strings.Contains(msg, fmt.Sprintf("plugin type=%q failed (delete)", list.Plugins[i].Network.Type)) {
			return i
		}
	}
	return -1
}
