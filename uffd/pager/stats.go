package pager

import (
	"fmt"
	"io"
	"sort"
	"sync/atomic"
	"time"

	"github.com/zygote/zygote/uffd/pagerapi"
)

// counter indexes one per-session count; the server keeps the same
// counters summed over every session that ever ran, for /metrics.
type counter int

const (
	cFaults counter = iota
	cFaultPages
	cAroundPages
	cPrefetchPages
	cZeroPages
	cRemoveEvents
	cExists
	cRequeues
	cCacheHits
	cCacheMisses
	cBytesCopied
	nCounters
)

type counters [nCounters]atomic.Uint64

func (c *counters) get(i counter) uint64 { return c[i].Load() }

// faultBuckets are the upper bounds of the fault-service histogram.
var faultBuckets = []time.Duration{
	10 * time.Microsecond, 25 * time.Microsecond, 50 * time.Microsecond, 100 * time.Microsecond,
	250 * time.Microsecond, 500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond,
	5 * time.Millisecond, 10 * time.Millisecond, 100 * time.Millisecond, time.Second,
}

// histogram is a lock-free Prometheus histogram of fault service times:
// from reading the fault message to placing its page.
type histogram struct {
	buckets [13]atomic.Uint64 // len(faultBuckets)+1 (+Inf)
	sumNS   atomic.Uint64
	count   atomic.Uint64
}

func (h *histogram) observe(d time.Duration) {
	i := sort.Search(len(faultBuckets), func(i int) bool { return d <= faultBuckets[i] })
	h.buckets[i].Add(1)
	h.sumNS.Add(uint64(d))
	h.count.Add(1)
}

func sessionStats(c *counters) pagerapi.SessionStats {
	return pagerapi.SessionStats{
		Faults:        c.get(cFaults),
		FaultPages:    c.get(cFaultPages),
		AroundPages:   c.get(cAroundPages),
		PrefetchPages: c.get(cPrefetchPages),
		ZeroPages:     c.get(cZeroPages),
		RemoveEvents:  c.get(cRemoveEvents),
		Exists:        c.get(cExists),
		Requeues:      c.get(cRequeues),
		CacheHits:     c.get(cCacheHits),
		CacheMisses:   c.get(cCacheMisses),
		BytesCopied:   c.get(cBytesCopied),
	}
}

// writeMetrics renders the Prometheus text exposition format.
func writeMetrics(w io.Writer, cache pagerapi.CacheStats, states map[pagerapi.SessionState]int, total *counters, h *histogram) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	metric := func(name, typ, help string, value any) {
		p("# HELP %s %s\n# TYPE %s %s\n%s %v\n", name, help, name, typ, name, value)
	}
	p("# HELP zygote_pager_sessions Sessions by state.\n# TYPE zygote_pager_sessions gauge\n")
	for _, st := range []pagerapi.SessionState{pagerapi.StateWaiting, pagerapi.StateServing, pagerapi.StateDetached, pagerapi.StateExited, pagerapi.StateFailed} {
		p("zygote_pager_sessions{state=%q} %d\n", st, states[st])
	}
	metric("zygote_pager_cache_budget_bytes", "gauge", "Page cache byte budget.", cache.BudgetBytes)
	metric("zygote_pager_cache_used_bytes", "gauge", "Bytes of resident cache chunks.", cache.UsedBytes)
	metric("zygote_pager_cache_entries", "gauge", "Resident cache chunks.", cache.Entries)
	metric("zygote_pager_cache_hits_total", "counter", "Chunk lookups served from the cache.", cache.Hits)
	metric("zygote_pager_cache_misses_total", "counter", "Chunk lookups read from a memory file.", cache.Misses)
	metric("zygote_pager_cache_evictions_total", "counter", "Chunks evicted to stay within budget.", cache.Evictions)
	metric("zygote_pager_disk_read_bytes_total", "counter", "Bytes read from memory files.", cache.DiskReadBytes)
	metric("zygote_pager_faults_total", "counter", "Page-fault messages served.", total.get(cFaults))
	p("# HELP zygote_pager_pages_total Pages placed, by reason.\n# TYPE zygote_pager_pages_total counter\n")
	for _, k := range []struct {
		kind string
		c    counter
	}{{"fault", cFaultPages}, {"around", cAroundPages}, {"prefetch", cPrefetchPages}, {"zero", cZeroPages}} {
		p("zygote_pager_pages_total{kind=%q} %d\n", k.kind, total.get(k.c))
	}
	metric("zygote_pager_copied_bytes_total", "counter", "Bytes placed with UFFDIO_COPY.", total.get(cBytesCopied))
	metric("zygote_pager_remove_events_total", "counter", "REMOVE/UNMAP events applied.", total.get(cRemoveEvents))
	metric("zygote_pager_eexist_total", "counter", "UFFDIO_COPY EEXIST answered with UFFDIO_WAKE.", total.get(cExists))
	metric("zygote_pager_requeues_total", "counter", "Faults requeued after EAGAIN.", total.get(cRequeues))

	name := "zygote_pager_fault_service_seconds"
	p("# HELP %s Time from reading a fault message to placing its page.\n# TYPE %s histogram\n", name, name)
	var cum uint64
	for i, le := range faultBuckets {
		cum += h.buckets[i].Load()
		p("%s_bucket{le=\"%g\"} %d\n", name, le.Seconds(), cum)
	}
	cum += h.buckets[len(faultBuckets)].Load()
	p("%s_bucket{le=\"+Inf\"} %d\n%s_sum %g\n%s_count %d\n", name, cum, name, float64(h.sumNS.Load())/1e9, name, h.count.Load())
}
