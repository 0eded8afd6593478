package instances_test

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/hypervisor/drivertest"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/instances/instancestest"
	"github.com/zygote/zygote/internal/testutil"
)

// TestDensifyAfterStandby: a parked memory file fragmented by in-place
// writes to blocks a fork shares is rewritten densely in the background,
// with its content intact (the fake's restore checks every byte).
func TestDensifyAfterStandby(t *testing.T) {
	h := instancestest.New(t, testutil.XFS(t), instancestest.Clone)
	src := create(t, h, "src")
	const span = 16 << 20 // the guest's data: one contiguous run
	if err := h.VM(src.ID).GuestWrite(1<<20, make([]byte, span)); err != nil {
		t.Fatal(err)
	}
	page := make([]byte, 4096)
	scribble := func(n int) {
		vm := h.VM(src.ID)
		for i := 0; i < n; i++ {
			off := int64(1<<20) + int64(rand.IntN(span/4096))*4096
			page[0] = byte(i)
			if err := vm.GuestWrite(off, page); err != nil {
				t.Fatal(err)
			}
		}
	}
	h.M.Standby(ctx, "src")
	fork(t, h, "src", instances.ForkRequest{Name: "child"}) // every block now shared
	h.M.Restore(ctx, "src")
	scribble(1500) // in place, into shared blocks: extents split
	mem := filepath.Join(h.DataDir, "instances", src.ID, drivertest.MemoryFile)
	if _, err := h.M.Standby(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, err := clone.FileLayout(mem)
		if err != nil {
			t.Fatal(err)
		}
		if !l.Fragmented() && l.Extents <= l.DataSegments {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("memory file still fragmented after 30 s: %+v", l)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := h.M.Restore(ctx, "src"); err != nil {
		t.Fatalf("restore the densified file: %v", err)
	}
	if _, err := h.M.Restore(ctx, "child"); err != nil {
		t.Fatalf("the fork suffered from its source's densify: %v", err)
	}
}

// recordingCloner is the daemon's clone seam with a log of the options
// each densify reached it with.
type recordingCloner struct {
	*clone.Cloner
	mu       sync.Mutex
	densify  []clone.Options
	prepared chan struct{}
}

func (c *recordingCloner) PrepareDensify(ctx context.Context, path string) (*clone.Densified, error) {
	c.mu.Lock()
	c.densify = append(c.densify, c.Options())
	c.mu.Unlock()
	defer func() { c.prepared <- struct{}{} }()
	return c.Cloner.PrepareDensify(ctx, path)
}

// TestDensifyUsesTheDaemonsCloneOptions: the background densify runs
// through the one clone seam the daemon configured, so --reflink-strict
// (and the daemon's logger) reach it, as they reach forks and snapshots.
// Before the seam existed densify called the clone package with options
// of its own, and strict mode was silently off for it.
func TestDensifyUsesTheDaemonsCloneOptions(t *testing.T) {
	rc := &recordingCloner{
		Cloner:   clone.New(clone.Options{Strict: true, NoSync: true, Logger: slog.New(slog.DiscardHandler)}),
		prepared: make(chan struct{}, 16),
	}
	h := instancestest.New(t, testutil.XFS(t), rc)
	src := create(t, h, "src")
	if err := h.VM(src.ID).GuestWrite(1<<20, make([]byte, 4<<20)); err != nil {
		t.Fatal(err)
	}
	h.M.Standby(ctx, "src")
	fork(t, h, "src", instances.ForkRequest{Name: "child"}) // every block now shared
	h.M.Restore(ctx, "src")
	page := make([]byte, 4096)
	for i := 0; i < 300; i++ { // in place, into shared blocks: extents split
		page[0] = byte(i)
		if err := h.VM(src.ID).GuestWrite(int64(1<<20)+int64(rand.IntN(1024))*4096, page); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.M.Standby(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rc.prepared:
	case <-time.After(30 * time.Second):
		t.Fatal("the densify of a fragmented memory file never reached the daemon's clone seam")
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, opts := range rc.densify {
		if !opts.Strict {
			t.Fatalf("densify ran with strict mode off: %+v", opts)
		}
	}
}

// gatedCloner holds every densify between its copy and its commit until
// release is closed, reporting each prepared path.
type gatedCloner struct {
	*clone.Cloner
	prepared chan string
	release  chan struct{}
}

func (c *gatedCloner) PrepareDensify(ctx context.Context, path string) (*clone.Densified, error) {
	d, err := c.Cloner.PrepareDensify(ctx, path)
	c.prepared <- path
	<-c.release
	return d, err
}

// fragment makes name's parked memory file fragmented: an owning fork
// shares every block, then the guest writes pages in place. It leaves
// name Running.
func fragment(t *testing.T, h *instancestest.Harness, name string) {
	t.Helper()
	v := mustGet(t, h, name)
	if err := h.VM(v.ID).GuestWrite(1<<20, make([]byte, 4<<20)); err != nil {
		t.Fatal(err)
	}
	h.M.Standby(ctx, name)
	fork(t, h, name, instances.ForkRequest{Name: name + "-owner", Memory: instances.MemoryOwned})
	h.M.Restore(ctx, name)
	page := make([]byte, 4096)
	for i := 0; i < 300; i++ {
		page[0] = byte(i)
		if err := h.VM(v.ID).GuestWrite(int64(1<<20)+int64(rand.IntN(1024))*4096, page); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDensifyNeverRewritesASharingForksFile: a densify prepared on a
// parked source's file, then (while it copied, without the lock) sharing
// forks link that file and a snapshot of the same parked state is restored
// in place: the source has the same cache key but another file, and the
// prepared one is the sharing forks'. The densify must drop, not rewrite
// the shared file.
func TestDensifyNeverRewritesASharingForksFile(t *testing.T) {
	gc := &gatedCloner{
		Cloner:   clone.New(clone.Options{NoSync: true, Logger: slog.New(slog.DiscardHandler)}),
		prepared: make(chan string, 4),
		release:  make(chan struct{}),
	}
	h := instancestest.New(t, testutil.XFS(t), gc)
	defer func() {
		select {
		case <-gc.release:
		default:
			close(gc.release)
		}
	}()
	create(t, h, "src")
	fragment(t, h, "src")
	create(t, h, "other")
	fragment(t, h, "other")
	if _, err := h.M.Standby(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gc.prepared:
	case <-time.After(30 * time.Second):
		t.Fatal("test is void: no densify of the fragmented source")
	}
	s := snapshot(t, h, "src", "same-state")
	f := fork(t, h, "src", instances.ForkRequest{Name: "f1", Memory: instances.MemoryShared})
	fork(t, h, "src", instances.ForkRequest{Name: "f2", Memory: instances.MemoryShared})
	if _, err := h.M.RestoreSnapshot(ctx, "src", s.ID, instances.StateStandby); err != nil {
		t.Fatal(err)
	}
	shared := memPath(h, f.ID)
	if _, n := links(t, shared); n != 2 {
		t.Fatalf("test is void: the prepared file has %d links, want the two sharing forks'", n)
	}
	before, err := clone.FileLayout(shared)
	if err != nil || !before.Fragmented() {
		t.Fatalf("test is void: the shared file's layout %+v (%v)", before, err)
	}
	hash := fileHash(t, shared)
	writes := watchWrites(t, shared)
	close(gc.release)
	// Densifies run one at a time: once the next one is prepared, the
	// source's has finished.
	if _, err := h.M.Standby(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gc.prepared:
	case <-time.After(30 * time.Second):
		t.Fatal("the next densify never started")
	}
	if after, _ := clone.FileLayout(shared); after != before {
		t.Fatalf("the sharing forks' memory file was rewritten: layout %+v, was %+v", after, before)
	}
	if n := writes(); n != 0 {
		t.Fatalf("%d writes into the sharing forks' memory file", n)
	}
	if fileHash(t, shared) != hash {
		t.Fatal("the sharing forks' memory file changed")
	}
	noSharedWrites(t, h)
}
