package instances

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/store"
)

// memoryCollector exports, at scrape time, what each running instance's
// guest RAM costs the host: shared (page cache of a memory file sharing
// forks map together) and private (its own pages) bytes, for VMs whose
// driver reports it (hypervisor.MemoryUsageReporter).
type memoryCollector struct {
	desc   *prometheus.Desc
	source atomic.Pointer[func() []instanceMemory]
}

type instanceMemory struct {
	id, name, mode string
	usage          hypervisor.MemoryUsage
}

func newMemoryCollector() *memoryCollector {
	return &memoryCollector{desc: prometheus.NewDesc("zygote_instance_memory_bytes",
		"Resident guest RAM of a running instance: kind shared is the page cache of a memory file sharing forks map together, private the instance's own pages.",
		[]string{"instance", "name", "memory", "kind"}, nil)}
}

func (c *memoryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *memoryCollector) Collect(ch chan<- prometheus.Metric) {
	src := c.source.Load()
	if src == nil {
		return
	}
	for _, im := range (*src)() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(im.usage.SharedBytes), im.id, im.name, im.mode, "shared")
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(im.usage.PrivateBytes), im.id, im.name, im.mode, "private")
	}
}

// instanceMemory reads the memory usage of every running instance's VM.
func (m *Manager) instanceMemory() []instanceMemory {
	m.mu.Lock()
	rts := make([]*runtime, 0, len(m.runtimes))
	for _, rt := range m.runtimes {
		rts = append(rts, rt)
	}
	m.mu.Unlock()
	var out []instanceMemory
	for _, rt := range rts {
		mu, ok := rt.vm.(hypervisor.MemoryUsageReporter)
		if !ok {
			continue
		}
		u, err := mu.MemoryUsage()
		if err != nil {
			continue
		}
		var inst store.Instance
		if err := m.store.View(func(tx *store.Tx) (err error) { inst, err = tx.Instance(rt.id); return }); err != nil {
			continue
		}
		out = append(out, instanceMemory{id: inst.ID, name: inst.Name, mode: string(memoryModeOf(inst)), usage: u})
	}
	return out
}
