package instances

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/store"
)

// InstanceStats are an instance's resource use (hypeman's stats): the
// VMM process's CPU time and memory, and its NIC's traffic. A Standby or
// Stopped instance has no VMM: its process figures are zero; its traffic
// counters are its slot's (kept while the slot lives).
type InstanceStats struct {
	ID, Name             string
	AllocatedMemoryBytes int64
	AllocatedVCPUs       int
	CPUSeconds           float64
	MemoryRSSBytes       int64
	MemoryVMSBytes       int64
	NetworkRxBytes       uint64
	NetworkTxBytes       uint64
}

// Stats returns ref's resource use.
func (m *Manager) Stats(ctx context.Context, ref string) (InstanceStats, error) {
	var inst store.Instance
	if err := m.store.View(func(tx *store.Tx) (err error) { inst, err = tx.ResolveInstance(ref); return }); err != nil {
		return InstanceStats{}, err
	}
	st := InstanceStats{ID: inst.ID, Name: inst.Name, AllocatedMemoryBytes: inst.Spec.MemoryBytes, AllocatedVCPUs: inst.Spec.VCPUs}
	if rt := m.runtimeOf(inst.ID); rt != nil {
		pid := rt.vm.Process().PID
		st.CPUSeconds, st.MemoryRSSBytes, st.MemoryVMSBytes = processUse(pid)
	}
	if inst.Spec.Network && m.cfg.Network != nil {
		if ns, err := m.cfg.Network.Stats(inst.ID); err == nil {
			st.NetworkRxBytes, st.NetworkTxBytes = ns.RxBytes, ns.TxBytes
		} else {
			m.log.Debug("network stats", "instance", inst.ID, "err", err)
		}
	}
	return st, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on
// every Linux ABI Go supports.
const clockTicks = 100

// processUse reads a process's CPU time (user+system) and memory
// (resident and virtual) from /proc; a process gone reads as zero.
func processUse(pid int) (cpuSeconds float64, rss, vms int64) {
	if raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		s := string(raw)
		if i := strings.LastIndexByte(s, ')'); i > 0 {
			f := strings.Fields(s[i+1:])
			// f[0] is field 3 (state); utime and stime are fields 14, 15.
			if len(f) > 12 {
				u, _ := strconv.ParseUint(f[11], 10, 64)
				k, _ := strconv.ParseUint(f[12], 10, 64)
				cpuSeconds = float64(u+k) / clockTicks
			}
		}
	}
	if raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid)); err == nil {
		f := strings.Fields(string(raw))
		if len(f) >= 2 {
			page := int64(os.Getpagesize())
			size, _ := strconv.ParseInt(f[0], 10, 64)
			res, _ := strconv.ParseInt(f[1], 10, 64)
			vms, rss = size*page, res*page
		}
	}
	return cpuSeconds, rss, vms
}

// ResourceStatus is one host resource (hypeman's): what the host has and
// what instances hold. zygote oversubscribes nothing (ratio 1).
type ResourceStatus struct {
	Type           string
	Capacity       int64
	EffectiveLimit int64
	Allocated      int64
	Available      int64
	OversubRatio   float64
	Source         string
}

// Allocation is what one active instance holds.
type Allocation struct {
	ID, Name    string
	VCPUs       int
	MemoryBytes int64
	// DiskBytes is what the instance directory occupies on disk, a file
	// it shares by hard link (an image's root disk, a sharing group's
	// memory file, the guest kernel) apportioned among its links.
	DiskBytes int64
}

// Resources is the host's capacity and what instances hold.
type Resources struct {
	CPU, Memory, Disk, Network, DiskIO ResourceStatus
	// NetworkSlots is how many instances hold a network slot (an address).
	NetworkSlots int
	Allocations  []Allocation
}

// Resources reports the host's capacity and the instances' allocations.
// CPU and memory count active instances (those with a VMM); disk counts
// every instance and snapshot (what the data directory's filesystem
// holds). zygote sets no bandwidth or disk I/O limits: those report
// capacity 0 with source "unlimited".
func (m *Manager) Resources(ctx context.Context) (Resources, error) {
	var recs []store.Instance
	if err := m.store.View(func(tx *store.Tx) (err error) { recs, err = tx.Instances(); return }); err != nil {
		return Resources{}, err
	}
	r := Resources{
		CPU:     ResourceStatus{Type: "cpu", Capacity: int64(goruntime.NumCPU()), OversubRatio: 1, Source: "detected"},
		Memory:  ResourceStatus{Type: "memory", OversubRatio: 1, Source: "detected"},
		Disk:    ResourceStatus{Type: "disk", OversubRatio: 1, Source: "detected"},
		Network: ResourceStatus{Type: "network", OversubRatio: 1, Source: "unlimited"},
		DiskIO:  ResourceStatus{Type: "disk_io", OversubRatio: 1, Source: "unlimited"},
	}
	if c, err := hostCapacity(m.cfg.DataDir); err == nil {
		r.Memory.Capacity = c.MemoryBytes
	}
	var st unix.Statfs_t
	if err := unix.Statfs(m.cfg.DataDir, &st); err == nil {
		r.Disk.Capacity = int64(st.Blocks) * int64(st.Bsize)
		r.Disk.Allocated = int64(st.Blocks-st.Bfree) * int64(st.Bsize)
	}
	for _, inst := range recs {
		if inst.Spec.Network {
			r.NetworkSlots++
		}
		if inst.State != store.Running {
			continue
		}
		r.CPU.Allocated += int64(inst.Spec.VCPUs)
		r.Memory.Allocated += inst.Spec.MemoryBytes
		r.Allocations = append(r.Allocations, Allocation{ID: inst.ID, Name: inst.Name, VCPUs: inst.Spec.VCPUs,
			MemoryBytes: inst.Spec.MemoryBytes, DiskBytes: diskUse(m.instanceDir(inst.ID))})
	}
	for _, s := range []*ResourceStatus{&r.CPU, &r.Memory, &r.Disk} {
		s.EffectiveLimit = s.Capacity
		s.Available = max(s.EffectiveLimit-s.Allocated, 0)
	}
	return r, nil
}

// diskUse is the space a directory tree occupies (allocated blocks: a
// sparse or reflinked file counts what it holds, not its size). A file
// with n hard links counts 1/n: the links of an image's root disk or a
// sharing group's memory file, across instances, add up to the file once.
func diskUse(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if s, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += s.Blocks * 512 / int64(max(s.Nlink, 1))
			}
		}
		return nil
	})
	return n
}
