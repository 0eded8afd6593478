package network

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/cleanup"
)

// Manager owns the slots of one state dir. See the package doc for the
// lifecycle and the concurrency contract.
type Manager struct {
	cfg      Config
	log      *slog.Logger
	cni      *libcni.CNIConfig
	list     *libcni.NetworkConfigList
	lockFile *os.File

	mu     sync.Mutex
	closed bool
	slots  map[string]*record // guarded by mu: every ready slot by id, owned or pooled
	owners map[string]*record // guarded by mu: owner → its slot
	busy   map[string]bool    // guarded by mu: owners with an Acquire/Release/repair in flight
	free   []*record          // guarded by mu: ready slots without owner (the pool)
	ports  map[portKey]string // guarded by mu: published host port → owner
	fillN  int                // guarded by mu: pool slots being made

	refill chan struct{}
	stop   context.CancelFunc
	wg     sync.WaitGroup
}

// New opens the network of cfg.StateDir: it writes the default conflist
// if the config dir holds none, refuses a bridge subnet that overlaps a
// route of the daemon's namespace, takes the state dir's lock (one daemon
// per state dir), loads the slots a previous process left (finishing the
// teardown of half-made ones and removing orphan namespaces) and starts
// the pool. Owned slots are kept as they are; call Reconcile with the
// live instances to release the rest.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	for _, d := range []string{cfg.StateDir, cfg.nsDir(), cfg.slotDir(), cfg.ipamDir(), cfg.cacheDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("network: create %s: %w", d, err)
		}
	}
	lock, err := lockStateDir(cfg)
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg: cfg, log: cfg.Logger.With("component", "network"), lockFile: lock,
		slots: map[string]*record{}, owners: map[string]*record{}, busy: map[string]bool{},
		ports: map[portKey]string{}, refill: make(chan struct{}, 1),
	}
	ok := false
	defer func() {
		if !ok {
			lock.Close()
		}
	}()
	if m.list, err = loadNetwork(cfg); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	if err := checkSubnets(m.list); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	m.cni = newCNI(cfg)
	if err := m.load(ctx); err != nil {
		return nil, fmt.Errorf("network: load slots: %w", err)
	}
	poolCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	m.stop = stop
	m.wg.Add(1)
	go m.poolLoop(poolCtx)
	ok = true
	m.log.Info("network ready", "network", m.list.Name, "conf_dir", cfg.ConfDir, "slots", len(m.slots), "pool", cfg.PoolSize)
	return m, nil
}

func lockStateDir(cfg Config) (*os.File, error) {
	f, err := os.OpenFile(cfg.lockPath(), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("network: lock %s: %w", cfg.lockPath(), err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("network: state dir %s is in use by another process: %w", cfg.StateDir, errdefs.ErrConflict)
	}
	return f, nil
}

// checkSubnets refuses a bridge network whose subnet overlaps a route of
// the daemon's namespace (other than the bridge's own route): slots would
// shadow, or be shadowed by, an existing network.
func checkSubnets(list *libcni.NetworkConfigList) error {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	for _, b := range bridgesOf(list) {
		own := -1
		if l, err := netlink.LinkByName(b.Bridge); err == nil {
			own = l.Attrs().Index
		}
		for _, sn := range b.subnets() {
			for _, r := range routes {
				if r.Dst == nil || r.LinkIndex == own {
					continue
				}
				if ones, _ := r.Dst.Mask.Size(); ones == 0 {
					continue // a default route overlaps everything and conflicts with nothing
				}
				if r.Dst.Contains(sn.IP) || sn.Contains(r.Dst.IP) {
					dev := fmt.Sprintf("ifindex %d", r.LinkIndex)
					if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
						dev = l.Attrs().Name
					}
					return fmt.Errorf("subnet %s of network %s overlaps the existing route %s dev %s; choose another subnet (--subnet) that no route of this host uses: %w",
						sn, list.Name, r.Dst, dev, errdefs.ErrInvalidArgument)
				}
			}
		}
	}
	return nil
}

// recordFiles lists the slot records in dir and removes the temporaries
// of record writes a crash cut short (writeFileAtomic's ".<name>.*"): they
// were never renamed into place, so no slot depends on them.
func recordFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, "."):
			os.Remove(filepath.Join(dir, name))
		case strings.HasSuffix(name, ".json"):
			paths = append(paths, filepath.Join(dir, name))
		}
	}
	return paths, nil
}

// load reads the slot records a previous process left.
func (m *Manager) load(ctx context.Context) error {
	paths, err := recordFiles(m.cfg.slotDir())
	if err != nil {
		return err
	}
	known := map[string]bool{}
	var errs []error
	for _, path := range paths {
		rec, err := readRecord(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		known[rec.ID] = true
		switch {
		case rec.State != stateReady:
			// A crash while making it: undo whatever part exists.
			m.log.Info("removing half-made slot", "slot", rec.ID)
			if err := m.destroy(ctx, rec); err != nil {
				errs = append(errs, err)
			}
		case rec.Owner == "" && !nsAlive(rec.NetNS):
			if err := m.destroy(ctx, rec); err != nil {
				errs = append(errs, err)
			}
		default:
			m.slots[rec.ID] = rec
			if rec.Owner == "" {
				m.free = append(m.free, rec)
				continue
			}
			m.owners[rec.Owner] = rec
			for _, p := range rec.Ports {
				m.ports[portKey{p.Protocol, p.HostPort}] = rec.Owner
			}
		}
	}
	// Namespaces without a record: a crash between removing the record
	// and... cannot happen (the record goes last), but a hand-made mess
	// can. DEL them as slots of this network, then remove them.
	nsEntries, err := os.ReadDir(m.cfg.nsDir())
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, e := range nsEntries {
		if known[e.Name()] {
			continue
		}
		rec := &record{ID: e.Name(), NetNS: filepath.Join(m.cfg.nsDir(), e.Name())}
		m.log.Info("removing orphan slot namespace", "slot", rec.ID)
		if err := m.destroy(ctx, rec); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// poolLoop keeps PoolSize ready slots. It is owned by the Manager: Close
// stops it and waits.
func (m *Manager) poolLoop(ctx context.Context) {
	defer m.wg.Done()
	backoff := time.Duration(0)
	for {
		if backoff > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
		}
		for ctx.Err() == nil && m.reservePoolFill() {
			rec, err := m.createSlot(ctx, "", SlotOptions{})
			m.mu.Lock()
			m.fillN--
			if err == nil {
				m.slots[rec.ID] = rec
				m.free = append(m.free, rec)
			}
			m.mu.Unlock()
			if err != nil {
				if ctx.Err() == nil {
					m.log.Warn("pool: make slot", "err", err)
					backoff = min(max(2*backoff, time.Second), 30*time.Second)
				}
				break
			}
			backoff = 0
		}
		if backoff > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-m.refill:
		}
	}
}

func (m *Manager) reservePoolFill() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || len(m.free)+m.fillN >= m.cfg.PoolSize {
		return false
	}
	m.fillN++
	return true
}

func (m *Manager) kickPool() {
	select {
	case m.refill <- struct{}{}:
	default:
	}
}

func newSlotID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "zs" + hex.EncodeToString(b)
}

// createSlot makes a whole slot for owner ("" for the pool): record (creating) → namespace → CNI ADD →
// inside (TAP, forwarding, NAT) → record (ready). Each step registers its
// undo first; a failure undoes newest first, so DEL always runs before the
// namespace goes (or the bridge's masquerade rules would leak).
func (m *Manager) createSlot(ctx context.Context, owner string, opts SlotOptions) (_ *record, err error) {
	rec := &record{
		Version: recordVersion, ID: newSlotID(), Owner: owner, State: stateCreating, Network: m.list.Name,
		Ports: normalizePorts(opts.Publish), AllowPeers: opts.AllowPeers, GuestLink: TAPName,
	}
	rec.NetNS = filepath.Join(m.cfg.nsDir(), rec.ID)
	undo := cleanup.New()
	defer func() {
		if err != nil {
			if uerr := undo.Run(ctx); uerr != nil {
				err = errors.Join(err, uerr)
			}
		}
	}()
	if err := m.writeRecord(rec); err != nil {
		return nil, err
	}
	undo.Add("remove slot record", func(context.Context) error { return m.removeRecord(rec.ID) })
	if err := createNS(rec.NetNS); err != nil {
		return nil, fmt.Errorf("slot %s: %w", rec.ID, err)
	}
	undo.Add("remove slot namespace", func(context.Context) error { return removeNS(rec.NetNS) })
	undo.Add("CNI DEL", func(ctx context.Context) error { return m.cniDel(ctx, rec) })
	if err := m.cniAdd(ctx, rec, nil); err != nil {
		return nil, err
	}
	if err := setupSlot(rec); err != nil {
		return nil, err
	}
	rec.State = stateReady
	if err := m.writeRecord(rec); err != nil {
		return nil, err
	}
	undo.Release()
	return rec, nil
}

// destroy tears a slot down: CNI DEL, then the namespace, then the
// record. Each step is idempotent; a failure stops before the record goes,
// so the next attempt (Release again, or the next start) repeats it.
func (m *Manager) destroy(ctx context.Context, rec *record) error {
	if err := m.cniDel(ctx, rec); err != nil {
		return err
	}
	if err := removeNS(rec.NetNS); err != nil {
		return fmt.Errorf("slot %s: %w", rec.ID, err)
	}
	return m.removeRecord(rec.ID)
}

func (m *Manager) recordPath(id string) string { return filepath.Join(m.cfg.slotDir(), id+".json") }

func (m *Manager) writeRecord(rec *record) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(m.recordPath(rec.ID), data, 0o600); err != nil {
		return fmt.Errorf("slot %s: %w", rec.ID, err)
	}
	return nil
}

func (m *Manager) removeRecord(id string) error {
	if err := os.Remove(m.recordPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("slot %s: remove record: %w", id, err)
	}
	return nil
}

func readRecord(path string) (*record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read slot record: %w", err)
	}
	var rec record
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("slot record %s: %w", path, err)
	}
	if rec.Version != recordVersion {
		return nil, fmt.Errorf("slot record %s: version %d, this zygote reads %d", path, rec.Version, recordVersion)
	}
	return &rec, nil
}

// Acquire gives owner a slot: a ready one from the pool when opts
// publishes no port, else a new one made now (portmap takes its mappings
// at ADD). A host port published by another slot, or bound by a process
// of the daemon's namespace, is ErrConflict; an owner that already has a
// slot is ErrAlreadyExists. On failure nothing is left behind.
func (m *Manager) Acquire(ctx context.Context, owner string, opts SlotOptions) (*Slot, error) {
	if owner == "" {
		return nil, fmt.Errorf("acquire slot: empty owner: %w", errdefs.ErrInvalidArgument)
	}
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("acquire slot for %s: %w", owner, err)
	}
	opts.Publish = normalizePorts(opts.Publish)
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("acquire slot for %s: network manager closed: %w", owner, errdefs.ErrUnavailable)
	}
	if m.owners[owner] != nil || m.busy[owner] {
		m.mu.Unlock()
		return nil, fmt.Errorf("acquire slot for %s: it already has one: %w", owner, errdefs.ErrAlreadyExists)
	}
	for _, p := range opts.Publish {
		if o, taken := m.ports[portKey{p.Protocol, p.HostPort}]; taken {
			m.mu.Unlock()
			return nil, fmt.Errorf("acquire slot for %s: host port %d/%s is published by %s: %w", owner, p.HostPort, p.Protocol, o, errdefs.ErrConflict)
		}
	}
	for _, p := range opts.Publish {
		m.ports[portKey{p.Protocol, p.HostPort}] = owner
	}
	m.busy[owner] = true
	var rec *record
	if len(opts.Publish) == 0 && len(m.free) > 0 {
		rec = m.free[0]
		m.free = m.free[1:]
	}
	m.mu.Unlock()
	m.kickPool()

	slot, err := m.acquire(ctx, owner, opts, rec)
	m.mu.Lock()
	delete(m.busy, owner)
	if err != nil {
		for _, p := range opts.Publish {
			delete(m.ports, portKey{p.Protocol, p.HostPort})
		}
	} else {
		rec := slot.rec // the manager's copy; the caller's Slot never changes under it
		m.slots[rec.ID] = &rec
		m.owners[owner] = &rec
	}
	m.mu.Unlock()
	return slot, err
}

func (m *Manager) acquire(ctx context.Context, owner string, opts SlotOptions, pooled *record) (*Slot, error) {
	if pooled == nil {
		for _, p := range opts.Publish {
			if err := probeHostPort(p); err != nil {
				return nil, fmt.Errorf("acquire slot for %s: %w", owner, err)
			}
		}
		rec, err := m.createSlot(ctx, owner, opts)
		if err != nil {
			return nil, fmt.Errorf("acquire slot for %s: %w", owner, err)
		}
		return &Slot{rec: *rec}, nil
	}
	// A pooled slot (never with published ports).
	rec := *pooled
	rec.Owner, rec.AllowPeers = owner, opts.AllowPeers
	err := error(nil)
	if opts.AllowPeers {
		err = rewriteTable(&rec)
	}
	if err == nil {
		err = m.writeRecord(&rec)
	}
	if err != nil {
		derr := m.destroy(context.WithoutCancel(ctx), pooled)
		if derr == nil {
			m.mu.Lock()
			delete(m.slots, pooled.ID)
			m.mu.Unlock()
		}
		return nil, errors.Join(fmt.Errorf("acquire slot for %s: %w", owner, err), derr)
	}
	return &Slot{rec: rec}, nil
}

// rewriteTable rewrites a slot's NAT and isolation table after its
// options changed.
func rewriteTable(rec *record) error {
	slotIP, slotNet, err := net.ParseCIDR(rec.IP)
	if err != nil {
		return fmt.Errorf("slot %s: bad address %q: %w", rec.ID, rec.IP, err)
	}
	return withHandles(rec.NetNS, func(_ *netlink.Handle, nft *nftables.Conn) error {
		return writeTable(nft, slotIP, slotNet, net.ParseIP(rec.Gateway), !rec.AllowPeers)
	})
}

// probeHostPort fails with ErrConflict when a socket of the daemon's
// namespace holds the port (portmap would silently shadow it or be
// shadowed).
func probeHostPort(p Port) error {
	addr := fmt.Sprintf(":%d", p.HostPort)
	var err error
	switch p.Protocol {
	case UDP:
		var c net.PacketConn
		if c, err = net.ListenPacket("udp4", addr); err == nil {
			c.Close()
		}
	default:
		var l net.Listener
		if l, err = net.Listen("tcp4", addr); err == nil {
			l.Close()
		}
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("host port %d/%s is in use on this host: %w", p.HostPort, p.Protocol, errdefs.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("check host port %d/%s: %w", p.HostPort, p.Protocol, err)
	}
	return nil
}

// Get returns owner's slot, or ErrNotFound.
func (m *Manager) Get(owner string) (*Slot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec := m.owners[owner]
	if rec == nil {
		return nil, fmt.Errorf("slot of %s: %w", owner, errdefs.ErrNotFound)
	}
	return &Slot{rec: *rec}, nil
}

// Slots returns every owned slot.
func (m *Manager) Slots() []*Slot {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Slot, 0, len(m.owners))
	for _, rec := range m.owners {
		out = append(out, &Slot{rec: *rec})
	}
	return out
}

// Release tears down owner's slot (CNI DEL, which frees its address and
// published ports, then its namespace). Releasing an owner without a slot
// is not an error. On failure the slot stays owned, and Release or
// Reconcile may be called again.
func (m *Manager) Release(ctx context.Context, owner string) error {
	m.mu.Lock()
	rec := m.owners[owner]
	if rec == nil {
		m.mu.Unlock()
		return nil
	}
	if m.busy[owner] {
		m.mu.Unlock()
		return fmt.Errorf("release slot of %s: another operation holds it: %w", owner, errdefs.ErrConflict)
	}
	m.busy[owner] = true
	m.mu.Unlock()

	err := m.destroy(ctx, rec)

	m.mu.Lock()
	delete(m.busy, owner)
	if err == nil {
		delete(m.owners, owner)
		delete(m.slots, rec.ID)
		for _, p := range rec.Ports {
			delete(m.ports, portKey{p.Protocol, p.HostPort})
		}
	}
	m.mu.Unlock()
	if err != nil {
		return fmt.Errorf("release slot of %s: %w", owner, err)
	}
	m.log.Debug("slot released", "slot", rec.ID, "owner", owner, "ip", rec.IP)
	return nil
}

// Reconcile makes the slots match the live instances after a start:
// slots whose owner is not in live are released, and an owned slot whose
// namespace is gone (the host rebooted) is rebuilt, asking the IPAM for its
// old address. It returns the joined errors and goes on past each.
func (m *Manager) Reconcile(ctx context.Context, live map[string]bool) error {
	m.mu.Lock()
	var dead []string
	var broken []string
	for owner, rec := range m.owners {
		switch {
		case m.busy[owner]:
		case !live[owner]:
			dead = append(dead, owner)
		case !nsAlive(rec.NetNS):
			broken = append(broken, owner)
		}
	}
	m.mu.Unlock()
	var errs []error
	for _, owner := range dead {
		m.log.Info("releasing slot of a gone instance", "owner", owner)
		if err := m.Release(ctx, owner); err != nil {
			errs = append(errs, err)
		}
	}
	for _, owner := range broken {
		if err := m.rebuild(ctx, owner); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Stats returns the traffic counters of owner's slot, from its guest link.
func (m *Manager) Stats(owner string) (Stats, error) {
	s, err := m.Get(owner)
	if err != nil {
		return Stats{}, err
	}
	st, err := linkStats(s.rec.NetNS, s.rec.GuestLink)
	if err != nil {
		return Stats{}, fmt.Errorf("stats of %s: %w", owner, err)
	}
	return st, nil
}

// OpenTAP opens a new fd on the slot's TAP, inside the slot's namespace,
// for QEMU's `-netdev tap,fd=N` (pass it in ExtraFiles; it is close-on-exec
// here). The fd carries IFF_VNET_HDR, which QEMU detects and uses. The TAP
// persists: after QEMU exits (standby, stop) the slot keeps it, and a
// restore opens it again.
func (s *Slot) OpenTAP() (*os.File, error) {
	f, err := openTAP(s.rec.NetNS)
	if err != nil {
		return nil, fmt.Errorf("open TAP of slot %s: %w", s.rec.ID, err)
	}
	return f, nil
}

// Close stops the pool and releases the state dir. Slots, owned or
// pooled, stay: the next New on the same state dir finds them.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	m.stop()
	m.wg.Wait()
	return m.lockFile.Close()
}
