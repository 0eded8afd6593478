package instances

import (
	"context"

	"github.com/zygote/zygote/clone"
)

// Cloner is the manager's one clone seam: every directory copy (snapshot,
// fork, snapshot restore) and every densify goes through it, so the
// daemon's clone options — strict mode above all — apply to each.
// *clone.Cloner implements it; cmd/zygote builds that once from its
// configuration. The manager calls the clone package directly only for
// helpers that take no options (FileLayout, IsTempName).
type Cloner interface {
	// Dir copies the directory tree src to dst (which must not exist),
	// reflink-first, and reports how.
	Dir(ctx context.Context, src, dst string) (clone.Stats, error)
	// PrepareDensify starts the dense rewrite of a fragmented file
	// (densify.go).
	PrepareDensify(ctx context.Context, path string) (*clone.Densified, error)
}

// dirExcepter is a Cloner that can leave top-level files out of a copy
// (*clone.Cloner is one): a sharing fork links its memory file instead of
// copying it (sharing.go), which matters where the copy is not a reflink.
type dirExcepter interface {
	DirExcept(ctx context.Context, src, dst string, except ...string) (clone.Stats, error)
}

// clone copies a directory, but for the top-level files named in except
// when the Cloner can leave them out (else they are copied too), and
// records the strategy in logs and metrics.
func (m *Manager) clone(ctx context.Context, src, dst string, except ...string) (clone.Stats, error) {
	var st clone.Stats
	var err error
	if de, ok := m.cfg.Clone.(dirExcepter); ok && len(except) > 0 {
		st, err = de.DirExcept(ctx, src, dst, except...)
	} else {
		st, err = m.cfg.Clone.Dir(ctx, src, dst)
	}
	if err != nil {
		return st, err
	}
	strategy := string(st.Strategy)
	m.metrics.cloneTotal.WithLabelValues(strategy).Inc()
	m.metrics.cloneBytes.WithLabelValues(strategy).Add(float64(st.Bytes))
	m.log.Debug("cloned directory", "clone_strategy", strategy, "bytes", st.Bytes, "duration", st.Duration)
	return st, nil
}
