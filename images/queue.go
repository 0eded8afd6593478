package images

import (
	"context"
	"sync"
)

// queue admits at most n conversions at once, first come first served,
// and tells each waiter its position (1 = next).
type queue struct {
	mu      sync.Mutex
	n       int
	running int
	waiting []*ticket
}

type ticket struct {
	ready chan struct{}
}

func newQueue(n int) *queue {
	if n < 1 {
		n = 1
	}
	return &queue{n: n}
}

// acquire waits for a slot. When it has to wait, onQueued is called
// (without the queue's lock) with the ticket whose position reads the
// place in line, and with nil once admitted. The returned release must be
// called exactly once.
func (q *queue) acquire(ctx context.Context, onQueued func(*ticket)) (release func(), err error) {
	q.mu.Lock()
	if q.running < q.n && len(q.waiting) == 0 {
		q.running++
		q.mu.Unlock()
		return q.release, nil
	}
	tk := &ticket{ready: make(chan struct{})}
	q.waiting = append(q.waiting, tk)
	q.mu.Unlock()
	onQueued(tk)
	defer onQueued(nil)
	for {
		select {
		case <-tk.ready:
			return q.release, nil
		case <-ctx.Done():
			q.mu.Lock()
			select {
			case <-tk.ready: // admitted meanwhile: hand the slot on
				q.mu.Unlock()
				q.release()
			default:
				q.remove(tk)
				q.mu.Unlock()
			}
			return nil, ctx.Err()
		}
	}
}

// position returns tk's 1-based place in line, 0 once admitted.
func (q *queue) position(tk *ticket) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, w := range q.waiting {
		if w == tk {
			return i + 1
		}
	}
	return 0
}

func (q *queue) remove(tk *ticket) {
	for i, w := range q.waiting {
		if w == tk {
			q.waiting = append(q.waiting[:i], q.waiting[i+1:]...)
			return
		}
	}
}

func (q *queue) release() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.waiting) > 0 {
		tk := q.waiting[0]
		q.waiting = q.waiting[1:]
		close(tk.ready) // the slot passes straight to the next waiter
		return
	}
	q.running--
}
