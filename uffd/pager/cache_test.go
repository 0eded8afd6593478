package pager

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/zygote/zygote/errdefs"
)

const testChunk = 8192

func fillWith(b byte, calls *atomic.Int32) func([]byte) error {
	return func(buf []byte) error {
		if calls != nil {
			calls.Add(1)
		}
		for i := range buf {
			buf[i] = b
		}
		return nil
	}
}

func mustAcquire(t *testing.T, c *Cache, key string, off int64, fill func([]byte) error) (*Chunk, bool) {
	t.Helper()
	ch, hit, err := c.Acquire(context.Background(), key, off, testChunk, fill)
	if err != nil {
		t.Fatal(err)
	}
	return ch, hit
}

func TestCacheHitMissAndKeys(t *testing.T) {
	c, err := NewCache(4*testChunk, testChunk)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var calls atomic.Int32
	for _, tc := range []struct {
		key     string
		off     int64
		fill    byte
		wantHit bool
		want    byte
	}{
		{"a", 0, 1, false, 1},
		{"a", 0, 2, true, 1},  // same (key, offset): the cached copy
		{"b", 0, 3, false, 3}, // another key never sees a's bytes
		{"a", testChunk, 4, false, 4},
	} {
		ch, hit := mustAcquire(t, c, tc.key, tc.off, fillWith(tc.fill, &calls))
		if hit != tc.wantHit || ch.Bytes()[0] != tc.want {
			t.Fatalf("%s@%d: hit=%v byte=%d, want hit=%v byte=%d", tc.key, tc.off, hit, ch.Bytes()[0], tc.wantHit, tc.want)
		}
		ch.Release()
	}
	st := c.Stats()
	if st.Hits != 1 || st.Misses != 3 || calls.Load() != 3 || st.DiskReadBytes != 3*testChunk || st.Entries != 3 {
		t.Fatalf("stats %+v, fills %d", st, calls.Load())
	}
}

func resident(c *Cache, key string, off int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.entries[chunkID{key, off}]
	return ok
}

// TestCacheClockEviction: a chunk referenced since the hand last passed
// gets a second chance; an unreferenced one is evicted.
func TestCacheClockEviction(t *testing.T) {
	c, _ := NewCache(3*testChunk, testChunk)
	defer c.Close()
	get := func(off int64) bool {
		ch, hit := mustAcquire(t, c, "k", off*testChunk, fillWith(byte(off), nil))
		if ch.Bytes()[0] != byte(off) {
			t.Fatalf("chunk %d holds %d", off, ch.Bytes()[0])
		}
		ch.Release()
		return hit
	}
	get(0)
	get(1)
	get(2)
	if !get(0) { // sets chunk 0's reference bit
		t.Fatal("chunk 0 not cached")
	}
	get(3) // over budget: the hand spares 0 (clearing its bit) and takes 1
	if st := c.Stats(); st.Evictions != 1 || st.UsedBytes != 3*testChunk || st.Entries != 3 {
		t.Fatalf("after one overflow: %+v", st)
	}
	for off, want := range map[int64]bool{0: true, 1: false, 2: true, 3: true} {
		if got := resident(c, "k", off*testChunk); got != want {
			t.Fatalf("chunk %d resident=%v, want %v", off, got, want)
		}
	}
	get(4) // 0's bit is clear now: the next sweep may take it
	if st := c.Stats(); st.Evictions != 2 || st.UsedBytes > st.BudgetBytes {
		t.Fatalf("after a second overflow: %+v", st)
	}
}

func TestCachePinnedNeverEvicted(t *testing.T) {
	c, _ := NewCache(testChunk, testChunk)
	defer c.Close()
	a, _ := mustAcquire(t, c, "k", 0, fillWith(1, nil))
	// Budget full of a pinned chunk: the next one is transient, a stays.
	b, hit := mustAcquire(t, c, "k", testChunk, fillWith(2, nil))
	if hit || b.Bytes()[0] != 2 || a.Bytes()[0] != 1 {
		t.Fatal("wrong bytes")
	}
	b.Release()
	if st := c.Stats(); st.Entries != 1 || st.Evictions != 0 {
		t.Fatalf("stats %+v", st)
	}
	a.Release()
	// A budget below one chunk caches nothing.
	z, _ := NewCache(0, testChunk)
	defer z.Close()
	for i := 0; i < 2; i++ {
		ch, hit := mustAcquire(t, z, "k", 0, fillWith(1, nil))
		ch.Release()
		if hit {
			t.Fatal("zero-budget cache hit")
		}
	}
}

func TestCacheLoadsOnceUnderConcurrency(t *testing.T) {
	c, _ := NewCache(16*testChunk, testChunk)
	defer c.Close()
	var calls atomic.Int32
	release := make(chan struct{})
	slowFill := func(buf []byte) error {
		calls.Add(1)
		<-release
		return fillWith(7, nil)(buf)
	}
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch, _, err := c.Acquire(context.Background(), "k", 0, testChunk, slowFill)
			if err != nil || ch.Bytes()[testChunk-1] != 7 {
				t.Errorf("acquire: %v", err)
				return
			}
			ch.Release()
		}()
	}
	close(release)
	wg.Wait()
	if calls.Load() != 1 {
		t.Fatalf("chunk read %d times, want once", calls.Load())
	}
	if st := c.Stats(); st.Misses != 1 || st.Hits != 7 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCacheFillErrorNotCached(t *testing.T) {
	c, _ := NewCache(4*testChunk, testChunk)
	defer c.Close()
	boom := errors.New("disk on fire")
	if _, _, err := c.Acquire(context.Background(), "k", 0, testChunk, func([]byte) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if ch, hit := mustAcquire(t, c, "k", 0, fillWith(5, nil)); hit || ch.Bytes()[0] != 5 {
		t.Fatal("a failed read was cached")
	} else {
		ch.Release()
	}
}

func TestCacheKeySizeConflict(t *testing.T) {
	c, _ := NewCache(4*testChunk, testChunk)
	defer c.Close()
	if err := c.Use("k", 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := c.Use("k", 2<<20); !errdefs.IsConflict(err) {
		t.Fatalf("second size for one key: %v, want a conflict", err)
	}
	c.Unuse("k")
	if err := c.Use("k", 2<<20); err != nil {
		t.Fatalf("after the key's last user left: %v", err)
	}
}
