package instances

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/zygote/zygote/store"
)

// Metrics are the manager's Prometheus metrics.
type Metrics struct {
	opDuration        *prometheus.HistogramVec
	forkPhase         *prometheus.HistogramVec
	cloneBytes        *prometheus.CounterVec
	cloneTotal        *prometheus.CounterVec
	standbyStateBytes prometheus.Histogram
	densified         prometheus.Counter
	memoryLinks       prometheus.Counter
	memoryOwned       prometheus.Counter
	memory            *memoryCollector // per instance, at scrape time (sharing_metrics.go)
}

// NewMetrics creates the metrics and registers them with reg (nil: not
// registered, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		opDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "zygote", Name: "operation_duration_seconds",
			Help:    "Duration of instance operations by operation and result.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"op", "result"}),
		forkPhase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "zygote", Name: "fork_phase_seconds",
			Help: "Duration of the steps of one fork: copy (its files), network_slot (its slot, from the pool or made), " +
				"network_tap (opening its TAP for its first restore), restore (to its target state, TAP included).",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"phase"}),
		cloneBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "zygote", Name: "clone_bytes_total",
			Help: "Bytes of instance and snapshot files copied, by clone strategy (reflink, copy_file_range, readwrite).",
		}, []string{"strategy"}),
		cloneTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "zygote", Name: "clones_total",
			Help: "Directory clones (snapshots, forks) by the strategy that served them.",
		}, []string{"strategy"}),
		standbyStateBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "zygote", Name: "standby_state_bytes",
			Help:    "Size of the device state file written at standby (memory is never copied).",
			Buckets: prometheus.ExponentialBuckets(16<<10, 2, 10),
		}),
		densified: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "zygote", Name: "memory_files_densified_total",
			Help: "Parked memory files rewritten densely after fork-shared blocks fragmented them.",
		}),
		memoryLinks: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "zygote", Name: "memory_links_total",
			Help: "Sharing forks that got a hard link of their source's memory file instead of a copy.",
		}),
		memoryOwned: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "zygote", Name: "memory_unshared_total",
			Help: "Shared memory files an owning instance replaced by its own copy before writing it.",
		}),
		memory: newMemoryCollector(),
	}
	if reg != nil {
		reg.MustRegister(m.opDuration, m.forkPhase, m.cloneBytes, m.cloneTotal, m.standbyStateBytes, m.densified, m.memoryLinks, m.memoryOwned, m.memory)
	}
	return m
}

// op starts timing an operation; call the returned func with its error.
func (m *Metrics) op(name string) func(error) {
	begin := time.Now()
	return func(err error) {
		result := "ok"
		if err != nil {
			result = "error"
		}
		m.opDuration.WithLabelValues(name, result).Observe(time.Since(begin).Seconds())
	}
}

// Phases of a fork (zygote_fork_phase_seconds).
const (
	phaseCopy        = "copy"
	phaseNetworkSlot = "network_slot"
	phaseNetworkTAP  = "network_tap"
	phaseRestore     = "restore"
)

// forkPhase records how long one step of inst's fork took, as the
// zygote_fork_phase_seconds metric and a log line ("fork phase", with
// phase and took) that benchmarks read.
func (m *Manager) forkPhase(inst store.Instance, phase string, d time.Duration) {
	m.metrics.forkPhase.WithLabelValues(phase).Observe(d.Seconds())
	m.log.Info("fork phase", "instance", inst.ID, "name", inst.Name, "phase", phase, "took", d)
}
