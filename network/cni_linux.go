package network

import (
	"context"
	"fmt"
	"net"

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
	if err := m.cni.DelNetworkList(ctx, m.list, runtimeConf(rec, nsPath)); err != nil {
		return fmt.Errorf("CNI DEL %s (network %s): %w", rec.ID, m.list.Name, err)
	}
	return nil
}
