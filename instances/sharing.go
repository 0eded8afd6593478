package instances

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/store"
)

// Memory sharing between forks (DESIGN §3 "Memory sharing", issue 12).
//
// An owning fork gets its own copy of its source's memory file (reflink-
// first): N running owning forks cost N× the guest RAM they touch, since
// copies are different inodes and share no page cache. A sharing fork
// gets a hard link of the source's memory file instead and runs it as a
// private (copy-on-write) mapping (hypervisor.Spec.SharedMemory): N
// sharing forks read one page cache and pay only for the pages they write.
//
// The rule that keeps DESIGN §2 (invariants 1, 2, 4): a memory file with
// more than one link is immutable. The driver holds it (MemorySharer):
//   - a sharing instance never writes its memory file: its own writes live
//     in its VMM's memory, and its standby saves them in its state file
//     (its parked form: the shared base plus its own delta);
//   - an owning instance breaks the link before anything writes its file
//     (restore.go: OwnMemory before the restore, which then maps it
//     writable-shared); the driver refuses a writable map of a linked file;
//   - densify (densify.go) never rewrites a file with more than one link;
//   - nothing discards guest RAM (no balloon, virtio-mem, postcopy).
//
// Crash safety adds no intent: linking happens inside a fork's intent
// (a crash removes the half-made fork, link and all); breaking a link is
// a copy to a temporary renamed over the link inside a restore's intent
// (a crash leaves the link or the own copy, byte-identical, plus at most a
// temporary the reconcile sweeps; the restore rule then keeps the
// instance Standby).

// MemoryMode is how a fork holds its memory file.
type MemoryMode string

const (
	// MemoryOwned: the fork's own copy (reflink-first).
	MemoryOwned MemoryMode = "owned"
	// MemoryShared: a hard link of the source's file, shared with every
	// other sharing fork of it, mapped privately.
	MemoryShared MemoryMode = "shared"
)

// ParseMemoryMode checks a memory mode from a request ("" is allowed: the
// daemon's default).
func ParseMemoryMode(s string) (MemoryMode, error) {
	switch m := MemoryMode(s); m {
	case "", MemoryOwned, MemoryShared:
		return m, nil
	}
	return "", fmt.Errorf("memory %q: want shared or owned: %w", s, errdefs.ErrInvalidArgument)
}

func memoryModeOf(r store.Instance) MemoryMode {
	if r.MemoryShared {
		return MemoryShared
	}
	return MemoryOwned
}

// sharer is the driver's memory-sharing capability, if it has one.
func (m *Manager) sharer(hv string) (hypervisor.MemorySharer, bool) {
	d, err := m.driver(hv)
	if err != nil {
		return nil, false
	}
	ms, ok := d.(hypervisor.MemorySharer)
	return ms, ok
}

// forkMemoryMode resolves a fork request's memory mode against the
// daemon's default and the source's driver (501 when the request asks
// for sharing the driver cannot do; a default of shared falls back to
// owned there).
func (m *Manager) forkMemoryMode(req MemoryMode, hv string) (MemoryMode, error) {
	mode := req
	if mode == "" {
		mode = m.cfg.ForkMemory
	}
	if mode != MemoryShared {
		return MemoryOwned, nil
	}
	if _, ok := m.sharer(hv); !ok {
		if req == "" {
			return MemoryOwned, nil
		}
		return "", fmt.Errorf("hypervisor %s cannot share memory between forks: %w", hv, errdefs.ErrNotImplemented)
	}
	return MemoryShared, nil
}

// sharedMemoryFiles names the files a fork's copy may leave out because
// it links them (its memory file, when it shares memory), relative to the
// directory.
func (m *Manager) sharedMemoryFiles(f store.Instance) []string {
	if !f.MemoryShared {
		return nil
	}
	d, err := m.driver(f.Spec.Hypervisor)
	if err != nil {
		return nil
	}
	mf, ok := d.(hypervisor.MemoryFiler)
	if !ok {
		return nil
	}
	return []string{filepath.Base(mf.MemoryFile(m.instanceDir(f.ID)))}
}

// linkForkMemory gives a fresh fork a hard link of its source's memory
// file, in place of its copy if the clone made one. The caller holds the
// fork's lock, and the fork's intent covers it.
func (m *Manager) linkForkMemory(src forkSource, f *store.Instance) error {
	ms, ok := m.sharer(f.Spec.Hypervisor)
	if !ok {
		return fmt.Errorf("hypervisor %s cannot share memory: %w", f.Spec.Hypervisor, errdefs.ErrNotImplemented)
	}
	if err := ms.LinkMemory(src.dir, m.instanceDir(f.ID)); err != nil {
		return fmt.Errorf("share the memory file: %w", err)
	}
	m.metrics.memoryLinks.Inc()
	return nil
}

// ownMemory breaks the link of an owning instance's memory file before a
// restore writes it (the caller holds its lock, inside the restore's
// intent). A sharing instance keeps its link: it never writes the file.
func (m *Manager) ownMemory(ctx context.Context, inst store.Instance) error {
	if inst.MemoryShared {
		return nil
	}
	ms, ok := m.sharer(inst.Spec.Hypervisor)
	if !ok {
		return nil
	}
	copied, err := ms.OwnMemory(ctx, m.instanceDir(inst.ID))
	if err != nil {
		return fmt.Errorf("own the memory file before writing it: %w", err)
	}
	if copied {
		m.metrics.memoryOwned.Inc()
		m.log.Info("memory file unshared: the instance now owns a copy", "instance", inst.ID, "name", inst.Name)
	}
	return nil
}

// memoryShared reports whether inst's memory file has more than one link
// (densify leaves such a file alone).
func (m *Manager) memoryShared(inst store.Instance) bool {
	ms, ok := m.sharer(inst.Spec.Hypervisor)
	if !ok {
		return false
	}
	_, links, err := ms.MemoryLinks(m.instanceDir(inst.ID))
	return err != nil || links > 1
}

// viewMemory fills the sharing group of an instance with a memory file.
func (m *Manager) viewMemory(v *Instance, inst store.Instance) {
	if inst.State == store.Stopped {
		return
	}
	if ms, ok := m.sharer(inst.Spec.Hypervisor); ok {
		v.MemoryGroup, v.MemoryLinks, _ = ms.MemoryLinks(m.instanceDir(inst.ID))
	}
}
