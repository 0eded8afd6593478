package instances

import (
	"context"
	"time"
)

// CloneFunc copies the directory tree src to dst (which must not exist),
// reflink-first with a sparse fallback, and reports how. cmd/zygote wires
// it to the clone package.
type CloneFunc func(ctx context.Context, src, dst string) (CloneStats, error)

// CloneStats describes one directory copy.
type CloneStats struct {
	// Strategy is "reflink", "copy_file_range", "readwrite" or "mixed".
	Strategy string
	Bytes    int64
	Duration time.Duration
}

// clone copies a directory and records the strategy in logs and metrics.
func (m *Manager) clone(ctx context.Context, src, dst string) (CloneStats, error) {
	st, err := m.cfg.Clone(ctx, src, dst)
	if err != nil {
		return st, err
	}
	m.metrics.cloneTotal.WithLabelValues(st.Strategy).Inc()
	m.metrics.cloneBytes.WithLabelValues(st.Strategy).Add(float64(st.Bytes))
	m.log.Debug("cloned directory", "clone_strategy", st.Strategy, "bytes", st.Bytes, "duration", st.Duration)
	return st, nil
}
