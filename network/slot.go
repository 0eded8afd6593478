package network

import (
	"fmt"
	"net"
	"slices"

	"github.com/zygote/zygote/errdefs"
)

// The guest side of every slot. Every VM and every fork sees exactly this,
// whichever slot it runs in: the slot NATs it to the slot's own address.
// The gateway's MAC is fixed too, so a guest restored into another slot
// (a fork) finds its ARP entry for the gateway still valid.
const (
	// GuestIP is the guest's address, with GuestPrefixLen.
	GuestIP = "169.254.0.2"
	// GatewayIP is the TAP's address inside the slot: the guest's gateway.
	GatewayIP = "169.254.0.1"
	// GuestPrefixLen is the prefix length of the guest link.
	GuestPrefixLen = 30
	// GuestMAC is the guest NIC's MAC address.
	GuestMAC = "02:5a:79:67:00:02"
	// GatewayMAC is the MAC of the TAP (the guest's gateway).
	GatewayMAC = "02:5a:79:67:00:01"
	// TAPName is the TAP's name inside every slot.
	TAPName = "tap0"
	// SlotIfName is the CNI interface's name inside every slot.
	SlotIfName = "eth0"
)

// Protocol of a published port.
type Protocol string

const (
	TCP Protocol = "tcp"
	UDP Protocol = "udp"
)

// Port publishes a guest port on a host port (all host addresses), through
// the CNI portmap plugin to the slot's address and the slot's DNAT to the
// guest.
type Port struct {
	HostPort  int      `json:"host_port"`
	GuestPort int      `json:"guest_port"`
	Protocol  Protocol `json:"protocol"`
}

func (p Port) String() string { return fmt.Sprintf("%d:%d/%s", p.HostPort, p.GuestPort, p.Protocol) }

// SlotOptions shape a slot at Acquire.
type SlotOptions struct {
	// Publish lists the ports to publish. A slot with published ports is
	// made by a CNI ADD on the caller's path (portmap takes its mappings at
	// ADD); a slot without comes from the pool.
	Publish []Port
	// AllowPeers lets this slot exchange traffic with other slots of the
	// network on their slot addresses. By default a slot drops traffic to
	// and from other slots' addresses (the network's gateway, the host,
	// and everything beyond stay reachable). Two guests reach each other
	// when both slots allow peers.
	AllowPeers bool
}

func (o SlotOptions) validate() error {
	seen := map[portKey]bool{}
	for _, p := range o.Publish {
		if p.Protocol == "" {
			p.Protocol = TCP
		}
		if p.Protocol != TCP && p.Protocol != UDP {
			return fmt.Errorf("port %s: protocol must be tcp or udp: %w", p, errdefs.ErrInvalidArgument)
		}
		if p.HostPort < 1 || p.HostPort > 65535 || p.GuestPort < 1 || p.GuestPort > 65535 {
			return fmt.Errorf("port %s: ports must be 1-65535: %w", p, errdefs.ErrInvalidArgument)
		}
		k := portKey{p.Protocol, p.HostPort}
		if seen[k] {
			return fmt.Errorf("port %s: host port published twice: %w", p, errdefs.ErrInvalidArgument)
		}
		seen[k] = true
	}
	return nil
}

func normalizePorts(ports []Port) []Port {
	out := slices.Clone(ports)
	for i := range out {
		if out[i].Protocol == "" {
			out[i].Protocol = TCP
		}
	}
	return out
}

type portKey struct {
	proto Protocol
	port  int
}

// Slot is a VM's network: a namespace holding the CNI interface (the
// slot's address) and the TAP the VM's NIC is backed by. A Slot value is a
// read-only view; the Manager owns the slot.
type Slot struct {
	rec record
}

// ID is the slot's id, also its CNI container id.
func (s *Slot) ID() string { return s.rec.ID }

// Owner is the instance id the slot belongs to.
func (s *Slot) Owner() string { return s.rec.Owner }

// IP is the slot's CNI address: what users connect to, and the source of
// the guest's traffic once it leaves the slot.
func (s *Slot) IP() net.IP {
	ip, _, _ := net.ParseCIDR(s.rec.IP)
	return ip
}

// MAC is the guest NIC's MAC (GuestMAC for every slot).
func (s *Slot) MAC() string { return GuestMAC }

// Network is the CNI network's name (hypeman's network.name).
func (s *Slot) Network() string { return s.rec.Network }

// NetNSPath is the pinned namespace's path.
func (s *Slot) NetNSPath() string { return s.rec.NetNS }

// Ports are the published ports.
func (s *Slot) Ports() []Port { return slices.Clone(s.rec.Ports) }

// AllowPeers reports whether the slot may talk to other slots.
func (s *Slot) AllowPeers() bool { return s.rec.AllowPeers }

// Stats are a slot's traffic counters, seen from the guest: RxBytes is
// what the guest received (the TAP's tx), TxBytes what it sent (the TAP's
// rx). hypeman's network_rx_bytes / network_tx_bytes.
type Stats struct {
	RxBytes uint64
	TxBytes uint64
}

// record is a slot as persisted in StateDir/slots/<id>.json. A record is
// written before the namespace exists (State creating) and rewritten once
// the slot is whole (State ready), so a crash at any point leaves a record
// that says what to undo.
type record struct {
	Version    int    `json:"version"`
	ID         string `json:"id"`
	Owner      string `json:"owner,omitempty"`
	State      string `json:"state"`
	Network    string `json:"network"`
	NetNS      string `json:"netns"`
	IP         string `json:"ip,omitempty"`      // CIDR, from the CNI result
	Gateway    string `json:"gateway,omitempty"` // the network's gateway, from the CNI result
	Ports      []Port `json:"ports,omitempty"`
	AllowPeers bool   `json:"allow_peers,omitempty"`
	// GuestLink is the slot-side link facing the guest: TAPName, or the
	// veth of the test double (ConnectTestGuest).
	GuestLink string `json:"guest_link"`
}

const (
	recordVersion = 1
	stateCreating = "creating"
	stateReady    = "ready"
)
