//go:build linux

package pager

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/uffd"

	"github.com/zygote/zygote/uffd/internal/harness"
	"github.com/zygote/zygote/uffd/pagerapi"
)

// TestServesEveryByte runs the harness (a real process with a real uffd)
// against a session and checks every byte it touches against the file.
func TestServesEveryByte(t *testing.T) {
	requireUFFD(t)
	mem := newMemFile(t, 16<<20, 1)
	for _, tc := range []struct {
		name string
		req  pagerapi.CreateSessionRequest
		h    harness.Config
	}{
		{"sequential 4 threads", pagerapi.CreateSessionRequest{}, harness.Config{Threads: 4, Order: "seq"}},
		{"random 4 threads", pagerapi.CreateSessionRequest{}, harness.Config{Threads: 4, Order: "random", Seed: 7}},
		{"random writes 3 threads", pagerapi.CreateSessionRequest{}, harness.Config{Threads: 3, Order: "random", Seed: 8, Write: true}},
		{"page only, random", pagerapi.CreateSessionRequest{PageOnly: true}, harness.Config{Threads: 2, Order: "random", Seed: 9}},
		{"page_size_kib handshake", pagerapi.CreateSessionRequest{}, harness.Config{Threads: 2, Order: "seq", PageSizeField: "page_size_kib"}},
		{"handshake without page size", pagerapi.CreateSessionRequest{}, harness.Config{Threads: 1, Order: "seq", PageSizeField: "none"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, Config{})
			req := tc.req
			req.ID, req.MemoryPath, req.CacheKey, req.NoRecord = "vm", mem, "k", true
			sess := createSession(t, s, req)
			res := runHarness(t, sess, tc.h)
			if res.Checked != 4096 {
				t.Fatalf("checked %d pages, want 4096", res.Checked)
			}
			st := waitState(t, s, "vm", pagerapi.StateExited).Stats
			if st.Faults == 0 || st.FaultPages == 0 {
				t.Fatalf("no faults served: %+v", st)
			}
			if tc.req.PageOnly && st.AroundPages != 0 {
				t.Fatalf("page-only session placed %d neighbourhood pages", st.AroundPages)
			}
			if !tc.req.PageOnly && st.AroundPages == 0 {
				t.Fatalf("no neighbourhood pages placed: %+v", st)
			}
			placed := st.FaultPages + st.AroundPages
			if placed != 4096 {
				t.Fatalf("placed %d pages for a 4096-page guest: %+v", placed, st)
			}
		})
	}
}

// TestRemoveEvents: madvise(MADV_DONTNEED) in the VMM sends REMOVE events;
// a later fault in a removed range gets zeros, the rest keeps the file's
// bytes (and the harness's writes).
func TestRemoveEvents(t *testing.T) {
	requireUFFD(t)
	mem := newMemFile(t, 8<<20, 2)
	for _, tc := range []struct {
		name string
		req  pagerapi.CreateSessionRequest
		h    harness.Config
	}{
		{"untouched range removed", pagerapi.CreateSessionRequest{},
			harness.Config{Threads: 2, Order: "random", RemoveBefore: []harness.Range{{Offset: 1 << 20, Size: 3 << 20}}}},
		{"populated range removed, then touched again", pagerapi.CreateSessionRequest{},
			harness.Config{Threads: 2, Order: "seq", Write: true, RemoveAfter: []harness.Range{{Offset: 4096, Size: 5 << 20}}}},
		{"both, page only", pagerapi.CreateSessionRequest{PageOnly: true},
			harness.Config{Threads: 3, Order: "random", Seed: 3, Write: true,
				RemoveBefore: []harness.Range{{Offset: 0, Size: 1 << 20}}, RemoveAfter: []harness.Range{{Offset: 6 << 20, Size: 1 << 20}}}},
		{"removed while populate-all streams", pagerapi.CreateSessionRequest{PopulateAll: true},
			harness.Config{Threads: 2, Order: "seq", RemoveBefore: []harness.Range{{Offset: 2 << 20, Size: 2 << 20}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, Config{})
			req := tc.req
			req.ID, req.MemoryPath, req.CacheKey, req.NoRecord = "vm", mem, "k", true
			res := runHarness(t, createSession(t, s, req), tc.h)
			if res.ZeroChecked == 0 {
				t.Fatal("no removed page was checked")
			}
			info, err := s.Session("vm")
			if err != nil {
				t.Fatal(err)
			}
			if info.Stats.RemoveEvents == 0 {
				t.Fatalf("no REMOVE event applied: %+v", info.Stats)
			}
		})
	}
}

// TestSharedCache: a second session with the same key reads nothing from
// disk; two concurrent sessions read each chunk once.
func TestSharedCache(t *testing.T) {
	requireUFFD(t)
	const size = 16 << 20
	mem := newMemFile(t, size, 3)
	s := newServer(t, Config{})
	run := func(id string, h harness.Config) {
		runHarness(t, createSession(t, s, pagerapi.CreateSessionRequest{ID: id, MemoryPath: mem, CacheKey: "shared", NoRecord: true}), h)
	}
	run("first", harness.Config{Threads: 2, Order: "random", Seed: 1})
	after1 := s.Stats().Cache
	if after1.DiskReadBytes != size || after1.Misses != size/DefaultChunkBytes {
		t.Fatalf("first session: %+v", after1)
	}
	run("second", harness.Config{Threads: 2, Order: "seq"})
	after2 := s.Stats().Cache
	if after2.DiskReadBytes != size || after2.Misses != after1.Misses || after2.Hits < size/DefaultChunkBytes {
		t.Fatalf("second session read from disk: %+v", after2)
	}
	if st := waitState(t, s, "second", pagerapi.StateExited).Stats; st.CacheMisses != 0 || st.CacheHits == 0 {
		t.Fatalf("second session stats %+v", st)
	}

	// Concurrently, on a fresh pager: still one read per chunk.
	s2 := newServer(t, Config{})
	var procs []*harness.Proc
	for _, id := range []string{"a", "b", "c"} {
		sess := createSession(t, s2, pagerapi.CreateSessionRequest{ID: id, MemoryPath: mem, CacheKey: "shared", NoRecord: true})
		procs = append(procs, startHarness(t, sess, harness.Config{Threads: 2, Order: "random", Seed: int64(len(id))}))
	}
	for _, p := range procs {
		if res, err := p.Result(ctxFor(t, 60*time.Second)); err != nil || res.Mismatches != 0 {
			t.Fatalf("concurrent session: %v, %+v", err, res)
		}
	}
	if st := s2.Stats().Cache; st.DiskReadBytes != size {
		t.Fatalf("three concurrent sessions read %d bytes from disk for a %d-byte file", st.DiskReadBytes, size)
	}
}

// TestNoStaleContent: the cache holds copies keyed by content; after the
// file changes under a new key, a session sees the new bytes. The control
// (the old key on the changed file) shows the cache really serves copies,
// which is why the key must change with the content.
func TestNoStaleContent(t *testing.T) {
	requireUFFD(t)
	const size = 4 << 20
	mem := newMemFile(t, size, 10)
	s := newServer(t, Config{})
	req := func(id, key string) pagerapi.CreateSessionRequest {
		return pagerapi.CreateSessionRequest{ID: id, MemoryPath: mem, CacheKey: key, NoRecord: true}
	}
	runHarness(t, createSession(t, s, req("v1", "content-1")), harness.Config{Threads: 2, Order: "seq"})
	writeMemFile(t, mem, size, 11) // in place: same path, same inode, new bytes
	runHarness(t, createSession(t, s, req("v2", "content-2")), harness.Config{Threads: 2, Order: "random"})

	p := startHarness(t, createSession(t, s, req("stale", "content-1")), harness.Config{Threads: 1, Order: "seq"})
	res, err := p.Result(ctxFor(t, 60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if res.Mismatches != res.Checked {
		t.Fatalf("control: reusing a key after the content changed served %d/%d file-fresh pages; the cache is not holding copies", res.Checked-res.Mismatches, res.Checked)
	}
}

// TestTwoRegionsAboveFourGiB maps a guest over 3 GiB the way Firecracker
// does on x86: two regions around the MMIO gap, the second at file offset
// 3 GiB. The file is sparse; sampled pages carry data, holes read as zeros.
func TestTwoRegionsAboveFourGiB(t *testing.T) {
	requireUFFD(t)
	const (
		low  = 3 << 30
		high = 64 << 20
	)
	path := filepath.Join(t.TempDir(), "memory")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(low + high); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(42))
	pages := []int64{0, low - 4096, low, low + high - 4096}
	for i := 0; i < 60; i++ {
		pages = append(pages, rng.Int63n((low+high)/4096)*4096)
	}
	buf := make([]byte, 4096)
	for i, off := range pages {
		if i%5 == 4 {
			continue // a hole: must read as zeros
		}
		for j := 0; j < 4096; j += 8 {
			binary.LittleEndian.PutUint64(buf[j:], pattern(off+int64(j), 5))
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	s := newServer(t, Config{})
	sess := createSession(t, s, pagerapi.CreateSessionRequest{ID: "big", MemoryPath: path, CacheKey: "big", NoRecord: true})
	res := runHarness(t, sess, harness.Config{
		Threads: 2, Order: "random",
		Regions: []harness.Range{{Offset: 0, Size: low}, {Offset: low, Size: high}},
		Pages:   pages,
	})
	if res.Checked != len(pages) {
		t.Fatalf("checked %d of %d pages", res.Checked, len(pages))
	}
	info, _ := s.Session("big")
	if len(info.Regions) != 2 || info.Regions[0].Offset+info.Regions[1].Offset != low {
		t.Fatalf("regions %+v", info.Regions)
	}
}

// TestMalformedHandshakes: each bad handshake fails its own session with a
// clear error and closes that socket; a healthy session beside them is
// unaffected.
func TestMalformedHandshakes(t *testing.T) {
	requireUFFD(t)
	mem := newMemFile(t, 4<<20, 6)
	s := newServer(t, Config{})
	good := startHarness(t, createSession(t, s, pagerapi.CreateSessionRequest{ID: "good", MemoryPath: mem, CacheKey: "k", NoRecord: true}),
		harness.Config{Threads: 2, Order: "random", WaitGo: true})
	if _, err := good.Next(ctxFor(t, 30*time.Second), "ready"); err != nil {
		t.Fatal(err)
	}

	u, err := uffd.Open(uffd.NonBlocking)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	valid := `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]`
	for i, tc := range []struct {
		name    string
		body    string
		fds     []int
		connect bool // false: never connect (handshake timeout)
		wantErr string
	}{
		{"garbage", "hello pager", []int{u.FD()}, true, "want a JSON array"},
		{"empty array", "[]", []int{u.FD()}, true, "no memory regions"},
		{"no descriptor", valid, nil, true, "no userfaultfd attached"},
		{"two descriptors", valid, []int{u.FD(), u.FD()}, true, "2 descriptors"},
		{"not a userfaultfd", valid, []int{int(devnull.Fd())}, true, "not a userfaultfd"},
		{"beyond the file", `[{"base_host_virt_addr":4096,"size":8388608,"offset":0,"page_size":4096}]`, []int{u.FD()}, true, "beyond the memory file"},
		{"bad page size", `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size_kib":4}]`, []int{u.FD()}, true, "power of two"},
		{"incomplete, then silence", `[{"base_host_virt_addr":`, []int{u.FD()}, true, "no complete JSON array"},
		{"nobody connects", "", nil, false, "no VMM connected"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("bad-%d", i)
			sess := createSession(t, s, pagerapi.CreateSessionRequest{ID: id, MemoryPath: mem, CacheKey: "k", NoRecord: true, HandshakeTimeoutMS: 300})
			if tc.connect {
				conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sess.SocketPath, Net: "unix"})
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				if err := uffd.SendRaw(conn, []byte(tc.body), tc.fds...); err != nil {
					t.Fatal(err)
				}
				conn.SetReadDeadline(time.Now().Add(20 * time.Second))
				if n, err := conn.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
					t.Fatalf("pager kept the bad connection open: read %d, %v", n, err)
				}
			}
			info := waitState(t, s, id, pagerapi.StateFailed)
			if !strings.Contains(info.Error, tc.wantErr) {
				t.Fatalf("error %q, want one containing %q", info.Error, tc.wantErr)
			}
			if _, err := os.Stat(sess.SocketPath); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("failed session's socket still exists: %v", err)
			}
		})
	}
	if err := good.Go(); err != nil {
		t.Fatal(err)
	}
	if res, err := good.Result(ctxFor(t, 60*time.Second)); err != nil || res.Mismatches != 0 || res.Checked != 1024 {
		t.Fatalf("healthy session beside the bad ones: %v %+v", err, res)
	}
}

// TestVMMKilledMidRun: the harness dies while faults are being served; the
// pager notices through the pidfd and closes the session.
func TestVMMKilledMidRun(t *testing.T) {
	requireUFFD(t)
	mem := newMemFile(t, 8<<20, 7)
	s := newServer(t, Config{})
	sess := createSession(t, s, pagerapi.CreateSessionRequest{ID: "vm", MemoryPath: mem, CacheKey: "k", NoRecord: true, PageOnly: true})
	p := startHarness(t, sess, harness.Config{Threads: 1, Order: "random", HoldAfter: 100})
	if _, err := p.Next(ctxFor(t, 30*time.Second), "holding"); err != nil {
		t.Fatal(err)
	}
	if st := waitState(t, s, "vm", pagerapi.StateServing); st.PeerPID != p.PID() {
		t.Fatalf("peer pid %d, harness %d", st.PeerPID, p.PID())
	}
	p.Kill()
	info := waitState(t, s, "vm", pagerapi.StateExited)
	if info.Stats.Faults < 100 {
		t.Fatalf("served %d faults before the kill, want >= 100", info.Stats.Faults)
	}
	if err := s.CloseSession(context.Background(), "vm"); err != nil {
		t.Fatalf("closing an exited session: %v", err)
	}
	if _, err := s.Session("vm"); !errdefs.IsNotFound(err) {
		t.Fatalf("closed session still listed: %v", err)
	}
}

// TestPrefetchWorkingSet: the first restore of a key records its fault
// order; the next one streams it right after the handshake, so touching
// the same pages faults not once.
func TestPrefetchWorkingSet(t *testing.T) {
	requireUFFD(t)
	mem := newMemFile(t, 64<<20, 8)
	var pages []int64
	for i := int64(0); i < 16; i++ {
		pages = append(pages, ((i*7)%32)*DefaultChunkBytes+i*4096) // one page in each of 16 chunks, scattered
	}
	s := newServer(t, Config{RecordWindow: time.Minute})
	h := harness.Config{Threads: 1, Order: "seq", Pages: pages}
	runHarness(t, createSession(t, s, pagerapi.CreateSessionRequest{ID: "first", MemoryPath: mem, CacheKey: "ws"}), h)
	waitState(t, s, "first", pagerapi.StateExited)
	s.ws.Wait()
	got, err := s.ws.Load("ws")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(pages) {
		t.Fatalf("recorded %v, want the touch order %v", got, pages)
	}

	for _, tc := range []struct {
		name       string
		noPrefetch bool
	}{{"with prefetch", false}, {"without prefetch", true}} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, Config{StateDir: s.cfg.StateDir, SocketPath: filepath.Join(t.TempDir(), "p.sock")})
			sess := createSession(t, s, pagerapi.CreateSessionRequest{ID: "next", MemoryPath: mem, CacheKey: "ws", NoPrefetch: tc.noPrefetch})
			hh := h
			hh.WaitGo = true
			p := startHarness(t, sess, hh)
			if _, err := p.Next(ctxFor(t, 30*time.Second), "ready"); err != nil {
				t.Fatal(err)
			}
			info := waitState(t, s, "next", pagerapi.StateServing)
			if !tc.noPrefetch {
				for info.Stats.PrefetchPages < 16*512 {
					time.Sleep(5 * time.Millisecond)
					info, _ = s.Session("next")
				}
			}
			p.Go()
			if res, err := p.Result(ctxFor(t, 60*time.Second)); err != nil || res.Mismatches != 0 {
				t.Fatalf("%v %+v", err, res)
			}
			info = waitState(t, s, "next", pagerapi.StateExited)
			// Count pages, not messages: the kernel may deliver a second
			// fault message for a page already placed (answered with
			// EEXIST + WAKE, counted in Exists), so Faults can exceed the
			// 16 distinct pages touched; FaultPages cannot.
			switch {
			case !tc.noPrefetch && (info.Stats.Faults != 0 || info.Stats.FaultPages != 0 || info.Stats.WorkingSetPages != 16):
				t.Fatalf("prefetched session still faulted: %+v", info.Stats)
			case tc.noPrefetch && (info.Stats.FaultPages != 16 || info.Stats.Faults < 16 || info.Stats.PrefetchPages != 0):
				t.Fatalf("session without prefetch: want 16 distinct pages placed on fault, got %+v", info.Stats)
			}
		})
	}
}

// TestPopulateAll: after the working set, every page is streamed, the
// ranges are unregistered and the VM runs on with the pager gone.
func TestPopulateAll(t *testing.T) {
	requireUFFD(t)
	mem := newMemFile(t, 32<<20, 9)
	s := newServer(t, Config{})
	sess := createSession(t, s, pagerapi.CreateSessionRequest{ID: "vm", MemoryPath: mem, CacheKey: "k", NoRecord: true, PopulateAll: true})
	p := startHarness(t, sess, harness.Config{Threads: 2, Order: "random", WaitGo: true, Write: true,
		RemoveAfter: []harness.Range{{Offset: 3 << 20, Size: 5 << 20}}})
	if _, err := p.Next(ctxFor(t, 30*time.Second), "ready"); err != nil {
		t.Fatal(err)
	}
	info := waitState(t, s, "vm", pagerapi.StateDetached)
	if info.Stats.PrefetchPages != 8192 || info.Stats.Faults != 0 {
		t.Fatalf("populate-all stats %+v", info.Stats)
	}
	s.Close() // the pager is gone: every page must already be there
	if err := p.Go(); err != nil {
		t.Fatal(err)
	}
	res, err := p.Result(ctxFor(t, 60*time.Second))
	if err != nil {
		t.Fatalf("harness after the pager left: %v (a hang here means pages were missing)", err)
	}
	if res.Mismatches != 0 || res.ZeroChecked == 0 {
		t.Fatalf("%+v", res)
	}
}

// TestCacheBudget: a cache far smaller than the guest still serves every
// byte, evicts, and stays within budget; a disabled cache shares nothing.
func TestCacheBudget(t *testing.T) {
	requireUFFD(t)
	const size = 16 << 20
	mem := newMemFile(t, size, 12)
	for _, tc := range []struct {
		name       string
		budget     int64
		wantShared bool
	}{
		{"two chunks", 2 * DefaultChunkBytes, false},
		{"disabled", -1, false},
		{"whole file", size, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, Config{CacheBytes: tc.budget})
			for _, id := range []string{"a", "b"} {
				runHarness(t, createSession(t, s, pagerapi.CreateSessionRequest{ID: id, MemoryPath: mem, CacheKey: "k", NoRecord: true}),
					harness.Config{Threads: 3, Order: "random", Seed: int64(len(tc.name)), Write: true})
			}
			st := s.Stats().Cache
			if st.UsedBytes > max(st.BudgetBytes, 0) {
				t.Fatalf("cache over budget: %+v", st)
			}
			if shared := st.DiskReadBytes == size; shared != tc.wantShared {
				t.Fatalf("read %d bytes from disk for two sessions of a %d-byte file (shared=%v, want %v): %+v",
					st.DiskReadBytes, size, shared, tc.wantShared, st)
			}
			if tc.budget == 2*DefaultChunkBytes && st.Evictions == 0 {
				t.Fatalf("no evictions under a two-chunk budget: %+v", st)
			}
		})
	}
}
