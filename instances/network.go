package instances

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/agentproto"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/store"
)

// Networker gives instances their network slots: a namespace with the
// instance's address and a TAP for its NIC (network.Manager, adapted in
// cmd/zygote). A slot belongs to an instance id from Acquire to Release;
// the instance keeps it through standby/restore and stop/start, so its
// address never changes; a fork acquires its own. Every guest sees the
// same fixed address (agentproto.GuestCIDR) whatever its slot: the slot
// translates, so a fork restores with nothing to change inside the guest.
type Networker interface {
	// Acquire gives owner a slot as opts say. A host port taken is
	// errdefs.ErrConflict; a plugin failure leaves no slot behind.
	Acquire(ctx context.Context, owner string, opts NetOptions) (NetSlot, error)
	// Get returns owner's slot (errdefs.ErrNotFound if it has none).
	Get(owner string) (NetSlot, error)
	// Release frees owner's slot (its address, its ports); a no-op when
	// owner has none.
	Release(ctx context.Context, owner string) error
	// Reconcile releases the slots of owners not in live and rebuilds
	// lost ones of owners in live.
	Reconcile(ctx context.Context, live map[string]bool) error
	// Stats are the slot's traffic counters seen from the guest.
	Stats(owner string) (NetStats, error)
}

// NetOptions are what an instance asks of its slot.
type NetOptions struct {
	// Publish publishes guest ports on host ports.
	Publish []Port
	// AllowPeers lets the guest exchange traffic with the guests of other
	// slots that allow peers (default: only the gateway, the host and
	// beyond).
	AllowPeers bool
}

// NetSlot is an instance's slot, as the manager uses it.
type NetSlot interface {
	// IP is the slot's address: what users connect to.
	IP() net.IP
	// Network is the network's name.
	Network() string
	// OpenTAP opens a new fd on the slot's TAP for one VMM launch.
	OpenTAP() (*os.File, error)
}

// NetStats are a slot's byte counters from the guest's side.
type NetStats struct {
	RxBytes, TxBytes uint64
}

// Port publishes GuestPort of the guest on HostPort of the host.
type Port struct {
	HostPort  int
	GuestPort int
	// Protocol is "tcp" (the default) or "udp".
	Protocol string
}

// Network is an instance's network as clients see it (hypeman's
// network object).
type Network struct {
	Enabled bool
	// IP is the slot's address ("" while the instance has no slot).
	IP string
	// MAC is the guest NIC's MAC (the same in every VM).
	MAC string
	// Name is the network's name.
	Name    string
	Publish []Port
	// AllowPeers: the guest may talk to other guests that allow peers.
	AllowPeers bool
}

// validateNetwork applies the network fields of a create request.
func (m *Manager) validateNetwork(req *CreateRequest) error {
	if req.NoNetwork || m.cfg.Network == nil {
		why := "the instance has networking off"
		if m.cfg.Network == nil {
			why = "this daemon runs without networking (zygote serve --network)"
		}
		if len(req.Publish) > 0 {
			return &FieldError{Field: "publish", Err: fmt.Errorf("publish: %s: %w", why, errdefs.ErrInvalidArgument)}
		}
		if req.AllowPeers {
			return &FieldError{Field: "network.allow_peers", Err: fmt.Errorf("allow_peers: %s: %w", why, errdefs.ErrInvalidArgument)}
		}
		return nil
	}
	seen := map[Port]bool{}
	for i := range req.Publish {
		p := &req.Publish[i]
		if p.Protocol == "" {
			p.Protocol = "tcp"
		}
		if p.Protocol != "tcp" && p.Protocol != "udp" {
			return &FieldError{Field: "publish", Err: fmt.Errorf("publish %d:%d: protocol %q: want tcp or udp: %w", p.HostPort, p.GuestPort, p.Protocol, errdefs.ErrInvalidArgument)}
		}
		if p.HostPort < 1 || p.HostPort > 65535 || p.GuestPort < 1 || p.GuestPort > 65535 {
			return &FieldError{Field: "publish", Err: fmt.Errorf("publish %d:%d: ports must be 1-65535: %w", p.HostPort, p.GuestPort, errdefs.ErrInvalidArgument)}
		}
		k := Port{HostPort: p.HostPort, Protocol: p.Protocol}
		if seen[k] {
			return &FieldError{Field: "publish", Err: fmt.Errorf("publish: host port %d/%s given twice: %w", p.HostPort, p.Protocol, errdefs.ErrInvalidArgument)}
		}
		seen[k] = true
	}
	return nil
}

func portsToRecord(ps []Port) []store.Port {
	var out []store.Port
	for _, p := range ps {
		out = append(out, store.Port{HostPort: p.HostPort, GuestPort: p.GuestPort, Protocol: p.Protocol})
	}
	return out
}

func portsOfRecord(ps []store.Port) []Port {
	var out []Port
	for _, p := range ps {
		out = append(out, Port{HostPort: p.HostPort, GuestPort: p.GuestPort, Protocol: p.Protocol})
	}
	return out
}

// slotOf returns inst's slot, acquiring one if it has none yet (a fresh
// instance, a fork, or a slot lost with its owner's record).
func (m *Manager) slotOf(ctx context.Context, inst store.Instance) (NetSlot, error) {
	if m.cfg.Network == nil {
		return nil, fmt.Errorf("instance %s has a network interface, but this daemon runs without networking (zygote serve --network): %w",
			inst.Name, errdefs.ErrUnavailable)
	}
	s, err := m.cfg.Network.Get(inst.ID)
	if err == nil {
		return s, nil
	}
	if !errdefs.IsNotFound(err) {
		return nil, err
	}
	s, err = m.cfg.Network.Acquire(ctx, inst.ID, NetOptions{Publish: portsOfRecord(inst.Publish), AllowPeers: inst.Spec.AllowPeers})
	if err != nil {
		if !classed(err) {
			// A CNI plugin's failure: the client gets its message (a 503,
			// not a 500 whose message stays in the log).
			err = fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
		}
		return nil, fmt.Errorf("network slot for %s: %w", inst.Name, err)
	}
	m.log.Info("network slot acquired", "instance", inst.ID, "name", inst.Name, "ip", s.IP(), "allow_peers", inst.Spec.AllowPeers)
	return s, nil
}

// classed reports whether err carries an errdefs class.
func classed(err error) bool {
	for _, c := range []error{errdefs.ErrInvalidArgument, errdefs.ErrNotFound, errdefs.ErrAlreadyExists, errdefs.ErrAmbiguous,
		errdefs.ErrInvalidState, errdefs.ErrConflict, errdefs.ErrNotImplemented, errdefs.ErrUnavailable,
		errdefs.ErrResourceExhausted, errdefs.ErrUnauthorized, errdefs.ErrLimitExceeded} {
		if errors.Is(err, c) {
			return true
		}
	}
	return false
}

// releaseSlot frees inst's slot, if networking is on.
func (m *Manager) releaseSlot(ctx context.Context, id string) error {
	if m.cfg.Network == nil {
		return nil
	}
	if err := m.cfg.Network.Release(ctx, id); err != nil {
		return fmt.Errorf("release network slot: %w", err)
	}
	return nil
}

// withNIC returns spec with inst's NIC attached: a fresh fd on its slot's
// TAP, to close (done) once the VMM has been launched (it holds its own).
func (m *Manager) withNIC(ctx context.Context, inst store.Instance, spec hypervisor.Spec) (hypervisor.Spec, func(), error) {
	if !inst.Spec.Network {
		return spec, func() {}, nil
	}
	s, err := m.slotOf(ctx, inst)
	if err != nil {
		return spec, nil, err
	}
	begin := time.Now()
	tap, err := s.OpenTAP()
	if err != nil {
		return spec, nil, fmt.Errorf("open the TAP of %s: %w", inst.Name, err)
	}
	if inst.NewIdentity {
		// A fork's first restore: what networking adds to it.
		m.forkPhase(inst, phaseNetworkTAP, time.Since(begin))
	}
	spec.NIC = &hypervisor.NIC{TAP: tap, MAC: agentproto.GuestMAC}
	return spec, func() { tap.Close() }, nil
}

// adoptSpec is the spec to attach to inst's live VMM with: a networked
// machine's NIC is described (its MAC, no TAP: the VMM holds its fd), so
// that a standby of the adopted VM records the devices it really has and
// a later restore, which passes the NIC, matches them.
func (m *Manager) adoptSpec(inst store.Instance) hypervisor.Spec {
	spec := m.specOf(inst)
	if inst.Spec.Network {
		spec.NIC = &hypervisor.NIC{MAC: agentproto.GuestMAC}
	}
	return spec
}

// guestNetwork is the guest's network configuration, sent at every boot:
// the same fixed address in every VM.
func (m *Manager) guestNetwork(inst store.Instance) *agentproto.NetworkConfig {
	if !inst.Spec.Network {
		return nil
	}
	return &agentproto.NetworkConfig{
		Interface: agentproto.GuestInterface, MAC: agentproto.GuestMAC,
		Address: agentproto.GuestCIDR, Gateway: agentproto.GatewayIP,
		DNS: slices.Clone(m.cfg.NetworkDNS),
	}
}

// networkOf is inst's network as clients see it.
func (m *Manager) networkOf(inst store.Instance) Network {
	n := Network{Enabled: inst.Spec.Network, Publish: portsOfRecord(inst.Publish), AllowPeers: inst.Spec.Network && inst.Spec.AllowPeers}
	if !n.Enabled {
		return n
	}
	n.MAC = agentproto.GuestMAC
	if m.cfg.Network != nil {
		if s, err := m.cfg.Network.Get(inst.ID); err == nil {
			n.IP, n.Name = s.IP().String(), s.Network()
		}
	}
	return n
}

// reconcileNetwork releases the slots of instances that are gone (a crash
// between a slot's acquire and its instance's commit, or in a delete) and
// rebuilds lost slots of those that remain. It runs after every intent is
// settled.
func (m *Manager) reconcileNetwork(ctx context.Context, recs []store.Instance) error {
	if m.cfg.Network == nil {
		return nil
	}
	live := map[string]bool{}
	for _, r := range recs {
		if r.Spec.Network {
			live[r.ID] = true
		}
	}
	if err := m.cfg.Network.Reconcile(ctx, live); err != nil {
		return fmt.Errorf("reconcile network slots: %w", err)
	}
	return nil
}
