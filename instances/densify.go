package instances

import (
	"context"
	"time"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/store"
)

// densifyLater keeps a parked memory file cheap to fork. A standby writes
// the guest's dirty pages in place; where a block was shared with a fork
// or snapshot (reflink), each 4 KiB write splits an extent, and a reflink
// copy costs per extent: down a fork chain, generation 20 took 295× as
// long as generation 1 (clone/README.md). A fragmented file is therefore
// rewritten densely in the background after the standby commits:
//
//  1. the slow copy into a temporary runs without the instance lock;
//  2. the swap (one remap per data segment) takes the lock and happens
//     only if the instance is still parked with the same cache key, i.e.
//     the same content; otherwise the copy is dropped.
//
// Content, holes and inode never change (invariant 4: only the instance's
// own file). The price is disk: a dense file shares no blocks with its
// ancestors. Config.NoDensify turns it off.
func (m *Manager) densifyLater(inst store.Instance) {
	if m.cfg.NoDensify {
		return
	}
	d, err := m.driver(inst.Spec.Hypervisor)
	if err != nil {
		return
	}
	mf, ok := d.(hypervisor.MemoryFiler)
	if !ok {
		return
	}
	path, key := mf.MemoryFile(m.instanceDir(inst.ID)), inst.CacheKey
	m.watchers.Add(1)
	go func() { // owner: the manager; Close cancels and waits
		defer m.watchers.Done()
		select {
		case m.densifySem <- struct{}{}: // one at a time: it is disk-bound
		case <-m.closingCtx.Done():
			return
		}
		defer func() { <-m.densifySem }()
		if m.memoryShared(inst) {
			return // a shared file is immutable (sharing.go)
		}
		layout, err := clone.FileLayout(path)
		if err != nil || !layout.Fragmented() {
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		stop := context.AfterFunc(m.closingCtx, cancel)
		defer stop()
		begin := time.Now()
		prepared, err := m.cfg.Clone.PrepareDensify(ctx, path)
		if err != nil {
			m.log.Warn("densify memory file", "instance", inst.ID, "err", err)
			return
		}
		defer prepared.Abort()
		cur, unlock, err := m.lockInstance(ctx, inst.ID)
		if err != nil {
			return
		}
		defer unlock()
		if cur.State != store.Standby || cur.CacheKey != key || m.memoryShared(cur) {
			// Changed, or linked by a sharing fork meanwhile (forks take
			// this lock): never rewrite a shared file.
			m.log.Debug("densify dropped: the instance changed meanwhile", "instance", inst.ID)
			return
		}
		// Commit checks the file it prepared is still this path's only
		// link: a snapshot restored in place keeps the cache key but puts
		// another file at the path, and the one prepared may be a sharing
		// fork's by now.
		ds, err := prepared.Commit(ctx)
		if errdefs.IsConflict(err) {
			m.log.Debug("densify dropped", "instance", inst.ID, "err", err)
			return
		}
		if err != nil {
			m.log.Warn("densify memory file", "instance", inst.ID, "err", err)
			return
		}
		m.metrics.densified.Inc()
		m.log.Info("memory file densified", "instance", inst.ID, "extents_before", ds.Before.Extents,
			"extents_after", ds.After.Extents, "copied_bytes", ds.CopiedBytes, "duration", time.Since(begin))
	}()
}
