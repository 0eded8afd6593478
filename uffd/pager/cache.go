package pager

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/uffd/pagerapi"
)

// Cache is the page cache shared by every session. It holds private copies
// of memory-file bytes, never a mapping of a file, in chunks keyed by
// (cache key, chunk-aligned file offset); a chunk is the 2 MiB
// neighbourhood the fault path serves at once, so one disk read feeds one
// neighbourhood for every session with the same key. The byte budget is
// enforced with CLOCK (second chance) over unpinned chunks.
//
// Concurrency: mu guards every field below it; counters are atomic. A chunk
// being loaded is pinned by its loader, and other callers wait for it, so
// each chunk is read from disk once however many sessions want it.
type Cache struct {
	chunk  int64
	budget int64

	mu      sync.Mutex
	used    int64               // +checklocks:mu; bytes of resident chunks
	entries map[chunkID]*entry  // +checklocks:mu
	ring    []*entry            // +checklocks:mu; resident chunks, CLOCK order
	hand    int                 // +checklocks:mu
	keys    map[string]*keyInfo // +checklocks:mu
	free    [][]byte            // +checklocks:mu; recycled buffers

	hits, misses, evictions, diskRead atomic.Uint64
}

type chunkID struct {
	key string
	off int64
}

type entry struct {
	id    chunkID
	buf   []byte
	ready chan struct{} // closed when buf is filled or err is set
	err   error         // written before ready is closed

	// guarded by Cache.mu
	pins      int
	ref       bool
	slot      int // index in ring; -1 if not resident (transient or evicted)
	transient bool
}

type keyInfo struct {
	size    int64
	users   int
	entries int
}

// maxFree bounds the recycled-buffer list.
const maxFree = 8

// NewCache makes a cache of budget bytes in chunks of chunk bytes (a
// multiple of the page size). A budget below one chunk disables sharing:
// every lookup reads the file into a transient buffer.
func NewCache(budget, chunk int64) (*Cache, error) {
	if chunk <= 0 || chunk%int64(unix.Getpagesize()) != 0 {
		return nil, fmt.Errorf("pager: cache chunk %d is not a positive multiple of the page size: %w", chunk, errdefs.ErrInvalidArgument)
	}
	if budget < 0 {
		return nil, fmt.Errorf("pager: cache budget %d < 0: %w", budget, errdefs.ErrInvalidArgument)
	}
	return &Cache{
		chunk:   chunk,
		budget:  budget,
		entries: map[chunkID]*entry{},
		keys:    map[string]*keyInfo{},
	}, nil
}

// ChunkBytes is the chunk size.
func (c *Cache) ChunkBytes() int64 { return c.chunk }

// Use declares that a session serves key from a file of size bytes. Equal
// keys must name equal content, so a second size for one key is refused
// (errdefs.ErrConflict): serving cached chunks of another file would hand a
// VM the wrong memory. Every Use is paired with Unuse.
func (c *Cache) Use(key string, size int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	ki := c.keys[key]
	if ki == nil {
		ki = &keyInfo{size: size}
		c.keys[key] = ki
	}
	if ki.size < 0 { // chunks were cached before any session declared a size
		ki.size = size
	}
	if ki.size != size {
		return fmt.Errorf("pager: cache key %q names content of %d bytes, this file has %d: a cache key must change whenever the content does: %w",
			key, ki.size, size, errdefs.ErrConflict)
	}
	ki.users++
	return nil
}

// Unuse ends a Use.
func (c *Cache) Unuse(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ki := c.keys[key]; ki != nil {
		ki.users--
		c.forgetKeyLocked(key, ki)
	}
}

func (c *Cache) forgetKeyLocked(key string, ki *keyInfo) {
	if ki.users <= 0 && ki.entries <= 0 {
		delete(c.keys, key)
	}
}

// Chunk is a pinned cache chunk; Bytes stays valid and unchanged until
// Release.
type Chunk struct {
	c   *Cache
	e   *entry
	Off int64 // file offset of Bytes()[0]
}

// Bytes is the chunk's content.
func (ch *Chunk) Bytes() []byte { return ch.e.buf }

// Release unpins the chunk. Call it exactly once.
func (ch *Chunk) Release() {
	c := ch.c
	c.mu.Lock()
	defer c.mu.Unlock()
	ch.e.pins--
	if ch.e.transient && ch.e.pins == 0 {
		c.freeBufLocked(ch.e.buf)
		ch.e.buf = nil
	}
}

// Acquire returns the chunk of key at off (a multiple of ChunkBytes),
// length bytes long (shorter only at the end of the file), pinned. If no
// session has it, fill is called once, with the chunk's buffer, to read it
// from the file; concurrent callers for the same chunk wait for that fill
// (or ctx). hit reports whether the bytes came from the cache.
func (c *Cache) Acquire(ctx context.Context, key string, off, length int64, fill func(buf []byte) error) (ch *Chunk, hit bool, err error) {
	if off%c.chunk != 0 || length <= 0 || length > c.chunk {
		return nil, false, fmt.Errorf("pager: cache: bad chunk [%d,+%d): %w", off, length, errdefs.ErrInvalidArgument)
	}
	id := chunkID{key, off}
	c.mu.Lock()
	if e := c.entries[id]; e != nil {
		e.pins++
		e.ref = true
		c.mu.Unlock()
		select {
		case <-e.ready:
		case <-ctx.Done():
			(&Chunk{c: c, e: e}).Release()
			return nil, false, ctx.Err()
		}
		if e.err != nil {
			(&Chunk{c: c, e: e}).Release()
			return nil, false, e.err
		}
		if int64(len(e.buf)) != length {
			(&Chunk{c: c, e: e}).Release()
			return nil, false, fmt.Errorf("pager: cache: chunk %q@%d holds %d bytes, want %d: %w", key, off, len(e.buf), length, errdefs.ErrConflict)
		}
		c.hits.Add(1)
		return &Chunk{c: c, e: e, Off: off}, true, nil
	}
	buf, err := c.allocLocked()
	if err != nil {
		c.mu.Unlock()
		return nil, false, err
	}
	e := &entry{id: id, buf: buf[:length], ready: make(chan struct{}), pins: 1, slot: -1}
	if c.makeRoomLocked(c.chunk) {
		c.entries[id] = e
		e.slot = len(c.ring)
		c.ring = append(c.ring, e)
		c.used += c.chunk
		if ki := c.keys[key]; ki != nil {
			ki.entries++
		} else {
			c.keys[key] = &keyInfo{size: -1, entries: 1}
		}
	} else {
		e.transient = true
	}
	c.mu.Unlock()

	c.misses.Add(1)
	if err := fill(e.buf); err != nil {
		e.err = fmt.Errorf("pager: read chunk %d of %q: %w", off, key, err)
		c.mu.Lock()
		if !e.transient {
			c.removeLocked(e)
			e.transient = true // the last Release frees the buffer
		}
		c.mu.Unlock()
		close(e.ready)
		(&Chunk{c: c, e: e}).Release()
		return nil, false, e.err
	}
	c.diskRead.Add(uint64(length))
	close(e.ready)
	return &Chunk{c: c, e: e, Off: off}, false, nil
}

// Peek returns the chunk of key at off, pinned, only if it is cached and
// loaded; it never reads or waits.
func (c *Cache) Peek(key string, off int64) (*Chunk, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[chunkID{key, off}]
	if e == nil {
		return nil, false
	}
	select {
	case <-e.ready:
	default:
		return nil, false // still loading
	}
	if e.err != nil {
		return nil, false
	}
	e.pins++
	e.ref = true
	c.hits.Add(1)
	return &Chunk{c: c, e: e, Off: off}, true
}

// makeRoomLocked evicts unpinned chunks, CLOCK order, until need more bytes
// fit the budget; false if they cannot.
func (c *Cache) makeRoomLocked(need int64) bool {
	if need > c.budget {
		return false
	}
	for steps := 0; c.used+need > c.budget; steps++ {
		if len(c.ring) == 0 || steps > 2*len(c.ring) {
			return false // everything resident is pinned
		}
		c.hand %= len(c.ring)
		e := c.ring[c.hand]
		switch {
		case e.pins > 0:
			c.hand++
		case e.ref:
			e.ref = false
			c.hand++
		default:
			c.removeLocked(e)
			c.freeBufLocked(e.buf)
			e.buf = nil
			c.evictions.Add(1)
			steps = 0
		}
	}
	return true
}

// removeLocked takes e out of the map and the ring (its buffer is the
// caller's business).
func (c *Cache) removeLocked(e *entry) {
	delete(c.entries, e.id)
	last := len(c.ring) - 1
	c.ring[e.slot] = c.ring[last]
	c.ring[e.slot].slot = e.slot
	c.ring[last] = nil
	c.ring = c.ring[:last]
	e.slot = -1
	c.used -= c.chunk
	if ki := c.keys[e.id.key]; ki != nil {
		ki.entries--
		c.forgetKeyLocked(e.id.key, ki)
	}
}

// allocLocked returns a chunk buffer: anonymous memory outside the Go heap,
// page-aligned for UFFDIO_COPY, never a view of a file.
func (c *Cache) allocLocked() ([]byte, error) {
	if n := len(c.free); n > 0 {
		b := c.free[n-1]
		c.free = c.free[:n-1]
		return b, nil
	}
	b, err := unix.Mmap(-1, 0, int(c.chunk), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("pager: cache: allocate %d bytes: %w: %w", c.chunk, err, errdefs.ErrResourceExhausted)
	}
	return b, nil
}

func (c *Cache) freeBufLocked(b []byte) {
	b = b[:cap(b)]
	if len(c.free) < maxFree {
		c.free = append(c.free, b)
		return
	}
	unix.Munmap(b)
}

// Stats reports the cache's counters.
func (c *Cache) Stats() pagerapi.CacheStats {
	c.mu.Lock()
	used, n := c.used, len(c.entries)
	c.mu.Unlock()
	return pagerapi.CacheStats{
		BudgetBytes:   c.budget,
		UsedBytes:     used,
		Entries:       n,
		ChunkBytes:    c.chunk,
		Hits:          c.hits.Load(),
		Misses:        c.misses.Load(),
		Evictions:     c.evictions.Load(),
		DiskReadBytes: c.diskRead.Load(),
	}
}

// Close releases every unpinned buffer. The cache must not be used after.
func (c *Cache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.ring {
		if e.pins == 0 && e.buf != nil {
			unix.Munmap(e.buf[:cap(e.buf)])
			e.buf = nil
		}
	}
	c.ring, c.entries = nil, map[chunkID]*entry{}
	for _, b := range c.free {
		unix.Munmap(b)
	}
	c.free = nil
	c.used = 0
}
