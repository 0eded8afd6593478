//go:build linux

package clone

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/testutil"
)

func TestFileLayout(t *testing.T) {
	cases := []struct {
		name string
		dir  func(testing.TB) string
	}{
		{"xfs", testutil.SharedXFS},
		{"btrfs", testutil.Btrfs},
		{"ext4", testutil.Ext4Dir},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(tc.dir(t), "memory")
			writeSparse(t, p, memSize, memSegments, 1)
			l, err := FileLayout(p)
			if err != nil {
				t.Fatal(err)
			}
			if l.DataSegments != len(memSegments) || l.Extents < len(memSegments) || l.Fragmented() {
				t.Errorf("layout %+v, want %d data segments, at least as many extents, not fragmented", l, len(memSegments))
			}
		})
	}
	t.Run("tmpfs", func(t *testing.T) {
		p := filepath.Join(testutil.Tmpfs(t, 1<<20), "memory")
		writeSparse(t, p, page, []segment{{0, page}}, 1)
		if _, err := FileLayout(p); !errdefs.IsNotImplemented(err) {
			t.Errorf("FileLayout on tmpfs: %v, want ErrNotImplemented", err)
		}
	})
}

func TestLayoutFragmented(t *testing.T) {
	for _, tc := range []struct {
		l    Layout
		want bool
	}{
		{Layout{Extents: 1, DataSegments: 1}, false},
		{Layout{Extents: 300, DataSegments: 10}, true},
		{Layout{Extents: 200, DataSegments: 10}, false}, // fragmented, but too small to matter
		{Layout{Extents: 5000, DataSegments: 3000}, false},
		{Layout{Extents: 7000, DataSegments: 3000}, true},
	} {
		if got := tc.l.Fragmented(); got != tc.want {
			t.Errorf("%+v.Fragmented() = %v, want %v", tc.l, got, tc.want)
		}
	}
}

// fragmentedChain makes base (written in data runs with holes between),
// reflinks it to child and dirties one page in eight of the child's data
// in place, which splits the child's extents. It returns the child.
func fragmentedChain(t *testing.T, dir string) (base, child string) {
	t.Helper()
	base, child = filepath.Join(dir, "base"), filepath.Join(dir, "child")
	segs := []segment{{0, 4 << 20}, {6 << 20, 7 << 20}} // hole between, trailing hole
	writeSparse(t, base, 8<<20, segs, 1)
	opts, _ := quietOpts()
	if _, err := File(context.Background(), base, child, opts); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(child, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(3, 3))
	pg := make([]byte, page)
	for _, s := range segs {
		for off := s.Off; off < s.End; off += 8 * page {
			for i := range pg {
				pg[i] = byte(rng.Uint32() | 1)
			}
			if _, err := f.WriteAt(pg, off+int64(rng.IntN(8))*page); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return base, child
}

// TestDensify: on reflink filesystems a fragmented file is rewritten down
// to one extent per data segment, keeping content, holes, inode and mode,
// and without touching the file it shared blocks with.
func TestDensify(t *testing.T) {
	for _, tc := range []struct {
		name string
		dir  func(testing.TB) string
	}{{"xfs", testutil.SharedXFS}, {"btrfs", testutil.Btrfs}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir(t)
			base, child := fragmentedChain(t, dir)
			baseSum, childSum := digest(t, base), digest(t, child)
			childMap, childSt := dataMap(t, child), lstat(t, child)
			before, err := FileLayout(child)
			if err != nil {
				t.Fatal(err)
			}
			if !before.Fragmented() {
				t.Fatalf("setup: child layout %+v is not fragmented", before)
			}
			opts, logs := quietOpts()
			ds, err := Densify(context.Background(), child, opts)
			if err != nil {
				t.Fatal(err)
			}
			if ds.Before != before || ds.After.Extents > ds.After.DataSegments || ds.After.DataSegments != len(childMap) {
				t.Errorf("densify %+v: want before %+v and one extent per data segment (%d)", ds, before, len(childMap))
			}
			if ds.CopiedBytes != 5<<20 {
				t.Errorf("copied %d bytes, want the 5 MiB of data and no hole", ds.CopiedBytes)
			}
			if digest(t, child) != childSum || !slices.Equal(dataMap(t, child), childMap) {
				t.Error("densify changed the file's content or holes")
			}
			if st := lstat(t, child); st.Ino != childSt.Ino || st.Mode != childSt.Mode || st.Size != childSt.Size {
				t.Errorf("densify changed inode/mode/size: %d/%o/%d, was %d/%o/%d", st.Ino, st.Mode, st.Size, childSt.Ino, childSt.Mode, childSt.Size)
			}
			if digest(t, base) != baseSum {
				t.Error("densify changed the file the child shared blocks with")
			}
			if l := logs.attrs("clone densify"); len(l) != 1 {
				t.Errorf("log lines %v", l)
			}
			assertNothingLeft(t, dir, "base", "child")
		})
	}
}

// TestDensifyLeavesFileAlone: when Densify cannot finish (cancelled, no
// reflink) the file is unchanged and its temporary is gone.
func TestDensifyLeavesFileAlone(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		dir  func(testing.TB) string
		is   func(error) bool
	}{
		{"cancelled", cancelled, testutil.SharedXFS, func(err error) bool { return errors.Is(err, context.Canceled) }},
		{"ext4 has no reflink", context.Background(), testutil.Ext4Dir, errdefs.IsNotImplemented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir(t)
			p := filepath.Join(dir, "memory")
			writeSparse(t, p, memSize, memSegments, 2)
			sum, l := digest(t, p), lstat(t, p)
			opts, _ := quietOpts()
			if _, err := Densify(tc.ctx, p, opts); !tc.is(err) {
				t.Fatalf("Densify: %v", err)
			}
			if digest(t, p) != sum || lstat(t, p).Ino != l.Ino || !slices.Equal(dataMap(t, p), memSegments) {
				t.Error("a failed Densify changed the file")
			}
			assertNothingLeft(t, dir, "memory")
		})
	}
}

// TestPrepareDensifyAbort: the slow half leaves the file alone; Abort
// removes the temporary and Commit after Abort does nothing.
func TestPrepareDensifyAbort(t *testing.T) {
	dir := testutil.SharedXFS(t)
	_, child := fragmentedChain(t, dir)
	sum := digest(t, child)
	before, err := FileLayout(child)
	if err != nil {
		t.Fatal(err)
	}
	opts, _ := quietOpts()
	d, err := PrepareDensify(context.Background(), child, opts)
	if err != nil {
		t.Fatal(err)
	}
	if after, _ := FileLayout(child); after != before || digest(t, child) != sum {
		t.Fatalf("PrepareDensify changed the file: layout %+v, was %+v", after, before)
	}
	d.Abort()
	d.Abort()
	if after, _ := FileLayout(child); after != before || digest(t, child) != sum {
		t.Fatal("Abort changed the file")
	}
	assertNothingLeft(t, dir, "base", "child")
}
