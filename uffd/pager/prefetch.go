package pager

import "sort"

// prefetchStep is one unit of prefetch work, small enough that a fault
// arriving meanwhile waits at most one chunk copy.
type prefetchStep struct {
	off int64 // file offset of the chunk
	// pages are recorded page offsets inside the chunk, ascending; nil
	// means every missing page of the chunk.
	pages []int64
}

// prefetchPlan is the order in which a session streams pages after the
// handshake: first the recorded working set's own pages (a few MiB,
// placed while the VMM is still loading device state), then their chunks
// (what the fault path's neighbourhood would have placed), then, for
// populate-all, every chunk in file order, repeated until nothing is
// missing (at most maxPopulatePasses passes).
type prefetchPlan struct {
	steps    []prefetchStep
	next     int
	wsPages  int // recorded pages
	wsChunks int
	all      bool
	allNext  int64
	allEnd   int64
	chunk    int64
	passes   int
	lastStep bool // the last step came from steps (for unread)
}

const maxPopulatePasses = 64

// newPrefetchPlan plans a session: recorded page offsets in first-fault
// order (offsets at or beyond fileSize are dropped), and, if populateEnd >
// 0, every chunk below it.
func newPrefetchPlan(recorded []int64, fileSize, chunk, populateEnd int64) prefetchPlan {
	p := prefetchPlan{chunk: chunk, all: populateEnd > 0, allEnd: populateEnd}
	var order []int64
	pages := map[int64][]int64{}
	seen := map[int64]bool{}
	for _, o := range recorded {
		if o < 0 || o >= fileSize || seen[o] {
			continue
		}
		seen[o] = true
		c := o / chunk * chunk
		if pages[c] == nil {
			order = append(order, c)
		}
		pages[c] = append(pages[c], o)
		p.wsPages++
	}
	for _, c := range order {
		ps := pages[c]
		sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
		p.steps = append(p.steps, prefetchStep{off: c, pages: ps})
	}
	for _, c := range order {
		p.steps = append(p.steps, prefetchStep{off: c})
	}
	p.wsChunks = len(order)
	return p
}

// inRecordedPages reports whether the recorded pages are still being
// streamed (the first wsChunks steps).
func (p *prefetchPlan) inRecordedPages() bool { return p.next < p.wsChunks }

func (p *prefetchPlan) active() bool {
	return p.next < len(p.steps) || (p.all && p.allNext < p.allEnd)
}

func (p *prefetchPlan) nextStep() (prefetchStep, bool) {
	if p.next < len(p.steps) {
		p.next++
		p.lastStep = true
		return p.steps[p.next-1], true
	}
	if p.all && p.allNext < p.allEnd {
		p.lastStep = false
		p.allNext += p.chunk
		return prefetchStep{off: p.allNext - p.chunk}, true
	}
	return prefetchStep{}, false
}

// unread gives the last step back, to be retried after a drain.
func (p *prefetchPlan) unread() {
	if p.lastStep {
		p.next--
	} else {
		p.allNext -= p.chunk
	}
}

// rewind starts another populate-all pass, if passes remain.
func (p *prefetchPlan) rewind() {
	if p.passes++; p.passes < maxPopulatePasses {
		p.allNext = 0
	}
}
