package instances

import (
	"context"
	"fmt"
	"sync"

	"github.com/zygote/zygote/errdefs"
)

// DefaultMaxSessions is the default bound on exec and cp sessions open at
// once on one instance. Each session holds a guest agent stream, a guest
// process or file, and a goroutine or two on both sides; the bound keeps a
// runaway client from exhausting a small guest.
const DefaultMaxSessions = 16

// ErrTooManySessions is returned by OpenSession when an instance already
// has its maximum of sessions open; the API answers 429.
var ErrTooManySessions = fmt.Errorf("too many exec/cp sessions open on the instance: %w", errdefs.ErrLimitExceeded)

// sessionTable counts open sessions by instance id. The zero value is
// ready to use.
type sessionTable struct {
	mu   sync.Mutex // a leaf lock
	open map[string]int
}

// OpenSession admits one exec or cp session on the instance ref names, if
// the instance can run one now (Running, or Initializing and about to
// be) and fewer than Config.MaxSessions are open. Call the returned func
// when the session ends.
func (m *Manager) OpenSession(ctx context.Context, ref string) (Instance, func(), error) {
	v, err := m.ExecTarget(ctx, ref)
	if err != nil {
		return v, nil, err
	}
	limit := m.cfg.MaxSessions
	if limit <= 0 {
		limit = DefaultMaxSessions
	}
	t := &m.sessions
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open == nil {
		t.open = map[string]int{}
	}
	if t.open[v.ID] >= limit {
		return v, nil, fmt.Errorf("instance %s has %d sessions open (the limit): %w", v.Name, limit, ErrTooManySessions)
	}
	t.open[v.ID]++
	var once sync.Once
	return v, func() {
		once.Do(func() {
			t.mu.Lock()
			defer t.mu.Unlock()
			if t.open[v.ID]--; t.open[v.ID] <= 0 {
				delete(t.open, v.ID)
			}
		})
	}, nil
}
