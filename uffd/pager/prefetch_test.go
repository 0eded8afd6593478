package pager

import (
	"fmt"
	"testing"
)

func TestPrefetchPlan(t *testing.T) {
	const chunk = 8 * 4096
	recorded := []int64{
		2*chunk + 3*4096, // first fault: chunk 2
		5 * 4096,         // chunk 0
		2*chunk + 4096,   // chunk 2 again
		2*chunk + 3*4096, // duplicate
		99 * chunk,       // beyond the file: dropped
	}
	p := newPrefetchPlan(recorded, 4*chunk, chunk, 4*chunk)
	var got []string
	for p.active() {
		st, _ := p.nextStep()
		got = append(got, fmt.Sprint(st.off/chunk, st.pages))
		if len(got) > 20 {
			t.Fatal("plan does not end")
		}
	}
	want := []string{
		// the recorded pages, chunk by chunk in first-fault order, ascending within
		fmt.Sprint(2, []int64{2*chunk + 4096, 2*chunk + 3*4096}),
		fmt.Sprint(0, []int64{5 * 4096}),
		// their chunks
		"2 []", "0 []",
		// populate-all: every chunk in file order
		"0 []", "1 []", "2 []", "3 []",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("steps\n got %v\nwant %v", got, want)
	}
	if p.wsPages != 3 || p.wsChunks != 2 {
		t.Fatalf("wsPages %d wsChunks %d", p.wsPages, p.wsChunks)
	}
	p.unread()
	if st, _ := p.nextStep(); st.off != 3*chunk {
		t.Fatalf("unread then next = chunk %d, want 3", st.off/chunk)
	}
	p.rewind()
	if st, _ := p.nextStep(); !p.active() || st.off != 0 {
		t.Fatal("rewind did not start another pass")
	}
	for i := 0; i < maxPopulatePasses; i++ {
		p.rewind()
	}
	for p.active() {
		p.nextStep()
	}
	if p.active() {
		t.Fatal("passes are not bounded")
	}
	if q := newPrefetchPlan(nil, 4*chunk, chunk, 0); q.active() {
		t.Fatal("empty plan is active")
	}
}
