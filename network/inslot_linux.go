package network

import (
	"errors"
	"fmt"
	"net"
	"os"
	"unsafe"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The nftables table zygote owns inside every slot. The slot's namespace
// is zygote's own, so nothing else lives there; the table is still named
// so that a reader knows whose it is.
const (
	nftTable      = "zygote"
	chainDNAT     = "prerouting"
	chainSNAT     = "postrouting"
	chainIsolate  = "forward"
	tapQueueFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
)

// withHandles opens a netlink handle and an nftables connection whose
// sockets live in the slot's namespace: no thread of ours switches
// namespaces for them.
func withHandles(nsPath string, fn func(h *netlink.Handle, nft *nftables.Conn) error) error {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", nsPath, err)
	}
	defer h.Close()
	nft, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("nftables in %s: %w", nsPath, err)
	}
	return fn(h, nft)
}

// setupSlot builds the slot's inside once CNI has added its interface:
// loopback up, forwarding on (a new namespace starts with ip_forward=0),
// the TAP with the gateway address and MAC, and the NAT and isolation
// table.
func setupSlot(rec *record) error {
	slotIP, slotNet, err := net.ParseCIDR(rec.IP)
	if err != nil {
		return fmt.Errorf("slot %s: bad address %q: %w", rec.ID, rec.IP, err)
	}
	gw := net.ParseIP(rec.Gateway)
	// All of it on a thread inside the slot: the TAP is made through
	// /dev/net/tun, which acts in the opening thread's namespace.
	err = inNS(rec.NetNS, func() error {
		if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		h, err := netlink.NewHandle()
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("loopback: %w", err)
		}
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("loopback up: %w", err)
		}
		if err := addTAP(h); err != nil {
			return err
		}
		nft, err := nftables.New()
		if err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
		if err := writeTable(nft, slotIP, slotNet, gw, !rec.AllowPeers); err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("slot %s: %w", rec.ID, err)
	}
	return nil
}

// addTAP creates the persistent TAP QEMU's NIC attaches to (OpenTAP), with
// the gateway's address and MAC. Idempotent.
func addTAP(h *netlink.Handle) error {
	link, err := h.LinkByName(TAPName)
	if err != nil {
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: TAPName},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE,
		}
		if err := h.LinkAdd(tap); err != nil {
			return fmt.Errorf("create %s: %w", TAPName, err)
		}
		if link, err = h.LinkByName(TAPName); err != nil {
			return fmt.Errorf("find %s: %w", TAPName, err)
		}
	}
	return setGuestLink(h, link)
}

// setGuestLink gives the slot's guest-facing link the gateway's MAC and
// address and brings it up.
func setGuestLink(h *netlink.Handle, link netlink.Link) error {
	name := link.Attrs().Name
	mac, _ := net.ParseMAC(GatewayMAC)
	if err := h.LinkSetHardwareAddr(link, mac); err != nil {
		return fmt.Errorf("set %s MAC: %w", name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(GatewayIP).To4(), Mask: net.CIDRMask(GuestPrefixLen, 32)}}
	if err := h.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("address %s on %s: %w", addr, name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("%s up: %w", name, err)
	}
	return nil
}

// writeTable (re)writes the slot's table in one transaction:
//
//	prerouting (nat):  iif eth0 ip daddr <slot> dnat to GuestIP
//	postrouting (nat): oif eth0 ip saddr GuestIP snat to <slot>
//	forward (filter):  when isolated, drop eth0 traffic to or from the
//	                   network's other addresses except its gateway
//
// Return traffic of both directions follows conntrack.
func writeTable(nft *nftables.Conn, slotIP net.IP, slotNet *net.IPNet, gw net.IP, isolate bool) error {
	guest := net.ParseIP(GuestIP).To4()
	slot := slotIP.To4()
	t := &nftables.Table{Name: nftTable, Family: nftables.TableFamilyIPv4}
	// Add then delete then add: the delete makes the write idempotent,
	// the first add makes the delete legal when the table is absent.
	nft.AddTable(t)
	nft.DelTable(t)
	nft.AddTable(t)
	accept := nftables.ChainPolicyAccept
	dnat := nft.AddChain(&nftables.Chain{Name: chainDNAT, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	snat := nft.AddChain(&nftables.Chain{Name: chainSNAT, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	fwd := nft.AddChain(&nftables.Chain{Name: chainIsolate, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	nft.AddRule(&nftables.Rule{Table: t, Chain: dnat, Exprs: append(ifname(expr.MetaKeyIIFNAME, SlotIfName),
		ipField(16), eq(slot),
		&expr.Immediate{Register: 1, Data: guest},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	)})
	nft.AddRule(&nftables.Rule{Table: t, Chain: snat, Exprs: append(ifname(expr.MetaKeyOIFNAME, SlotIfName),
		ipField(12), eq(guest),
		&expr.Immediate{Register: 1, Data: slot},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	)})
	if isolate {
		addIsolation(nft, t, fwd, slotNet, gw)
	}
	return nft.Flush()
}

// addIsolation drops forwarded traffic between the slot and the network's
// other addresses (other slots), keeping the gateway (the host).
func addIsolation(nft *nftables.Conn, t *nftables.Table, fwd *nftables.Chain, slotNet *net.IPNet, gw net.IP) {
	for _, dir := range []struct {
		key    expr.MetaKey
		offset uint32
	}{{expr.MetaKeyOIFNAME, 16}, {expr.MetaKeyIIFNAME, 12}} {
		exprs := ifname(dir.key, SlotIfName)
		if gw != nil && gw.To4() != nil {
			exprs = append(exprs, ipField(dir.offset), &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: gw.To4()})
		}
		exprs = append(exprs,
			ipField(dir.offset),
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte(slotNet.Mask), Xor: []byte{0, 0, 0, 0}},
			eq(slotNet.IP.To4()),
			&expr.Verdict{Kind: expr.VerdictDrop},
		)
		nft.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: exprs})
	}
}

// ifname matches the input or output interface's name.
func ifname(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameBytes(name)},
	}
}

func ifnameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// ipField loads 4 bytes of the IPv4 header (12: source, 16: destination).
func ipField(offset uint32) expr.Any {
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}
}

func eq(b []byte) expr.Any { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b} }

// openTAP attaches a new queue to the slot's persistent TAP, inside the
// slot's namespace, and returns it. The fd works in any namespace once
// open: QEMU gets it as -netdev tap,fd=N and needs no namespace of its own.
func openTAP(nsPath string) (*os.File, error) {
	var f *os.File
	err := inNS(nsPath, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		var req ifreq
		copy(req.name[:], TAPName)
		req.flags = tapQueueFlags
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
			unix.Close(fd)
			return fmt.Errorf("attach %s: %w", TAPName, errno)
		}
		f = os.NewFile(uintptr(fd), "/dev/net/tun:"+TAPName)
		return nil
	})
	return f, err
}

type ifreq struct {
	name  [unix.IFNAMSIZ]byte
	flags uint16
	_     [22]byte
}

// tapInfo reads a TAP fd's interface name and flags (TUNGETIFF).
func tapInfo(f *os.File) (name string, flags uint16, err error) {
	var req ifreq
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.TUNGETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		return "", 0, errno
	}
	n := 0
	for n < len(req.name) && req.name[n] != 0 {
		n++
	}
	return string(req.name[:n]), req.flags, nil
}

func linkStats(nsPath, link string) (Stats, error) {
	var st Stats
	err := withHandles(nsPath, func(h *netlink.Handle, _ *nftables.Conn) error {
		l, err := h.LinkByName(link)
		if err != nil {
			return fmt.Errorf("link %s: %w", link, err)
		}
		s := l.Attrs().Statistics
		if s == nil {
			return errors.New("link " + link + " has no statistics")
		}
		// The link's tx is what went to the guest.
		st = Stats{RxBytes: s.TxBytes, TxBytes: s.RxBytes}
		return nil
	})
	return st, err
}
