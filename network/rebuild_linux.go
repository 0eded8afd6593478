package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
)

// rebuild remakes an owned slot whose namespace is gone (a host reboot
// drops every pinned namespace; the records, the IPAM's allocations and
// the host rules in the daemon's namespace may outlive them). It DELs the
// old attachment, which frees its address, and ADDs a new one under the
// same container id asking for the same address, so the instance keeps
// its IP; an IPAM that cannot honour the request gives a new address,
// which is logged.
func (m *Manager) rebuild(ctx context.Context, owner string) (err error) {
	m.mu.Lock()
	old := m.owners[owner]
	if old == nil || m.busy[owner] {
		m.mu.Unlock()
		return nil
	}
	m.busy[owner] = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.busy, owner)
		m.mu.Unlock()
	}()
	rec := *old
	oldIP, _, _ := net.ParseCIDR(rec.IP)
	if err := m.cniDel(ctx, &rec); err != nil {
		return fmt.Errorf("rebuild slot of %s: %w", owner, err)
	}
	if err := removeNS(rec.NetNS); err != nil {
		return fmt.Errorf("rebuild slot of %s: %w", owner, err)
	}
	rec.State, rec.GuestLink = stateCreating, TAPName
	if err := m.writeRecord(&rec); err != nil {
		return fmt.Errorf("rebuild slot of %s: %w", owner, err)
	}
	fail := func(err error) error {
		// Leave no half-made slot: tear it down and forget the owner; the
		// instance is left without network, which its next start reports.
		derr := m.destroy(context.WithoutCancel(ctx), &rec)
		if derr == nil {
			m.forget(owner, &rec)
		}
		return errors.Join(fmt.Errorf("rebuild slot of %s: %w", owner, err), derr)
	}
	if err := createNS(rec.NetNS); err != nil {
		return fail(err)
	}
	if err := m.cniAdd(ctx, &rec, oldIP); err != nil {
		m.log.Warn("IPAM refused the old address; asking for any", "owner", owner, "ip", oldIP, "err", err)
		if derr := m.cniDel(ctx, &rec); derr != nil {
			return fail(errors.Join(err, derr))
		}
		if err := m.cniAdd(ctx, &rec, nil); err != nil {
			return fail(err)
		}
	}
	if err := setupSlot(&rec); err != nil {
		return fail(err)
	}
	rec.State = stateReady
	if err := m.writeRecord(&rec); err != nil {
		return fail(err)
	}
	m.mu.Lock()
	*old = rec
	m.mu.Unlock()
	m.log.Info("slot rebuilt", "owner", owner, "slot", rec.ID, "ip", rec.IP, "old_ip", oldIP)
	return nil
}

func (m *Manager) forget(owner string, rec *record) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.owners, owner)
	delete(m.slots, rec.ID)
	for _, p := range rec.Ports {
		delete(m.ports, portKey{p.Protocol, p.HostPort})
	}
}

// Cleanup removes everything zygote's network made under cfg: every slot
// (CNI DEL, which removes its host rules and address, then its namespace),
// every record, the IPAM data and CNI cache in the state dir, and — when
// the network is zygote's default conflist — that conflist and its bridge.
// It leaves CNI's shared top-level chains (CNI-HOSTPORT-DNAT, CNI-FORWARD,
// …), which other CNI users share, and any network an operator wrote.
// It refuses (ErrConflict) while a daemon holds the state dir.
// `zygote serve --cleanup-network` calls it.
func Cleanup(ctx context.Context, cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	if _, err := os.Stat(cfg.StateDir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	lock, err := lockStateDir(cfg)
	if err != nil {
		return err
	}
	defer lock.Close()
	m := &Manager{cfg: cfg, log: cfg.Logger.With("component", "network")}
	defaultFile := cfg.ConfDir + "/" + defaultConfFile
	ours := false
	if _, err := os.Stat(defaultFile); err == nil {
		ours = true
	}
	var errs []error
	if m.list, err = existingNetwork(cfg); err != nil {
		return fmt.Errorf("network cleanup: %w", err)
	}
	m.cni = newCNI(cfg)
	if err := m.destroyAll(ctx); err != nil {
		errs = append(errs, err)
	}
	if ours && m.list != nil {
		for _, b := range bridgesOf(m.list) {
			if err := deleteLink(b.Bridge); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.Remove(defaultFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		for _, d := range []string{cfg.ipamDir(), cfg.cacheDir(), cfg.slotDir(), cfg.nsDir()} {
			if err := os.RemoveAll(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("network cleanup: %w", err)
	}
	return nil
}

// destroyAll tears down every slot with a record and every namespace
// without one.
func (m *Manager) destroyAll(ctx context.Context) error {
	var errs []error
	seen := map[string]bool{}
	paths, _ := recordFiles(m.cfg.slotDir())
	for _, path := range paths {
		rec, err := readRecord(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		seen[rec.ID] = true
		if err := m.destroy(ctx, rec); err != nil {
			errs = append(errs, err)
		}
	}
	nsEntries, _ := os.ReadDir(m.cfg.nsDir())
	for _, e := range nsEntries {
		if seen[e.Name()] {
			continue
		}
		if err := m.destroy(ctx, &record{ID: e.Name(), NetNS: m.cfg.nsDir() + "/" + e.Name()}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// newCNI returns the libcni client. The exec is given explicitly: with
// nil, libcni 1.3 fills it in lazily on every call, a data race when ADDs
// run side by side (the pool and an Acquire).
func newCNI(cfg Config) *libcni.CNIConfig {
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	return libcni.NewCNIConfigWithCacheDir(cfg.BinDirs, cfg.cacheDir(), exec)
}

// deleteLink removes a link of the daemon's namespace by name; a missing
// link is fine.
func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}
