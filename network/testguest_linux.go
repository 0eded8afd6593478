package network

import (
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/zygote/zygote/errdefs"
)

// TestGuestLink is the slot-side name of the test double's veth.
const TestGuestLink = "gw0"

// ConnectTestGuest is a TEST DOUBLE for a VM: it joins the network
// namespace at guestNS (made by the caller) to owner's slot with a veth
// pair, and configures the guest end exactly as zygote-init configures a
// VM's NIC: eth0 with GuestMAC, GuestIP/GuestPrefixLen, default route via
// GatewayIP. The slot end takes the gateway's address and MAC from the
// TAP, which stays in the slot (still open-able) without an address, and
// becomes the slot's guest link (Stats read it). Package tests use it
// where no VM runs; the real path is OpenTAP.
func (m *Manager) ConnectTestGuest(owner, guestNS string) error {
	m.mu.Lock()
	rec := m.owners[owner]
	m.mu.Unlock()
	if rec == nil {
		return fmt.Errorf("connect test guest of %s: %w", owner, errdefs.ErrNotFound)
	}
	gns, err := netns.GetFromPath(guestNS)
	if err != nil {
		return fmt.Errorf("connect test guest: open %s: %w", guestNS, err)
	}
	defer gns.Close()
	guestMAC, _ := net.ParseMAC(GuestMAC)
	err = withHandles(rec.NetNS, func(h *netlink.Handle, _ *nftables.Conn) error {
		if tap, err := h.LinkByName(TAPName); err == nil {
			addrs, _ := h.AddrList(tap, netlink.FAMILY_V4)
			for _, a := range addrs {
				if err := h.AddrDel(tap, &a); err != nil {
					return fmt.Errorf("move gateway address off %s: %w", TAPName, err)
				}
			}
		}
		veth := &netlink.Veth{
			LinkAttrs:        netlink.LinkAttrs{Name: TestGuestLink},
			PeerName:         "eth0",
			PeerHardwareAddr: guestMAC,
			PeerNamespace:    netlink.NsFd(gns),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("create test guest veth: %w", err)
		}
		l, err := h.LinkByName(TestGuestLink)
		if err != nil {
			return err
		}
		return setGuestLink(h, l)
	})
	if err != nil {
		return fmt.Errorf("connect test guest of %s: %w", owner, err)
	}
	gh, err := netlink.NewHandleAt(gns)
	if err != nil {
		return fmt.Errorf("connect test guest: netlink in %s: %w", guestNS, err)
	}
	defer gh.Close()
	for _, name := range []string{"lo", "eth0"} {
		l, err := gh.LinkByName(name)
		if err != nil {
			return fmt.Errorf("connect test guest: %s: %w", name, err)
		}
		if name == "eth0" {
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(GuestIP).To4(), Mask: net.CIDRMask(GuestPrefixLen, 32)}}
			if err := gh.AddrReplace(l, addr); err != nil {
				return fmt.Errorf("connect test guest: address: %w", err)
			}
		}
		if err := gh.LinkSetUp(l); err != nil {
			return fmt.Errorf("connect test guest: %s up: %w", name, err)
		}
	}
	if err := gh.RouteReplace(&netlink.Route{Gw: net.ParseIP(GatewayIP).To4()}); err != nil {
		return fmt.Errorf("connect test guest: default route: %w", err)
	}
	m.mu.Lock()
	rec.GuestLink = TestGuestLink
	cp := *rec
	m.mu.Unlock()
	return m.writeRecord(&cp)
}
