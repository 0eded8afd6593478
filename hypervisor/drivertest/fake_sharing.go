package drivertest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/hypervisor"
)

// The fake shares memory like QEMU with share=off (hypervisor.MemorySharer):
// a shared VM reads its memory file and keeps the pages its guest writes
// private; its SaveState puts those pages in the state file; a restore
// loads them privately (shared) or into the memory file (owning, which
// must then have one link).

var _ hypervisor.MemorySharer = (*Fake)(nil)

const (
	fakePage    = 4096
	deltaMarker = "\nDELTA\n"
)

// LinkMemory makes dstDir's memory file a hard link of srcDir's.
func (f *Fake) LinkMemory(srcDir, dstDir string) error {
	tmp := filepath.Join(dstDir, "."+MemoryFile+".zygote-tmp-link")
	os.Remove(tmp)
	if err := os.Link(filepath.Join(srcDir, MemoryFile), tmp); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("fake link memory: %w", errors.Join(err, errdefs.ErrInvalidState))
		}
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dstDir, MemoryFile)); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// OwnMemory replaces a memory file with more than one link by a copy.
func (f *Fake) OwnMemory(ctx context.Context, dir string) (bool, error) {
	if err := f.takeFailure("OwnMemory"); err != nil {
		return false, err
	}
	path := filepath.Join(dir, MemoryFile)
	_, links, err := f.MemoryLinks(dir)
	if err != nil || links <= 1 {
		return false, err
	}
	tmp := filepath.Join(dir, "."+MemoryFile+".zygote-tmp-own")
	if err := sparseCopy(path, tmp); err != nil {
		os.Remove(tmp)
		return false, err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return false, err
	}
	return true, nil
}

// MemoryLinks reports the memory file's inode and link count.
func (f *Fake) MemoryLinks(dir string) (string, int, error) {
	fi, err := os.Stat(filepath.Join(dir, MemoryFile))
	if errors.Is(err, os.ErrNotExist) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, err
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino), int(st.Nlink), nil
}

// checkOwnMemory: like QEMU's driver, the fake never writes in place a
// memory file with more than one link.
func checkOwnMemory(dir string) error {
	fi, err := os.Stat(filepath.Join(dir, MemoryFile))
	if err != nil {
		return nil // created by the launch
	}
	if n := fi.Sys().(*syscall.Stat_t).Nlink; n > 1 {
		return fmt.Errorf("fake: the memory file has %d links and must not be written in place: %w", n, errdefs.ErrInvalidState)
	}
	return nil
}

// sparseCopy copies src to dst, holes kept (SEEK_DATA/SEEK_HOLE).
func sparseCopy(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := out.Truncate(fi.Size()); err != nil {
		return err
	}
	for off := int64(0); off < fi.Size(); {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if _, err := io.Copy(io.NewOffsetWriter(out, data), io.NewSectionReader(in, data, hole-data)); err != nil {
			return err
		}
		off = hole
	}
	return out.Sync()
}

// writePrivate copies each touched page into the overlay, then writes.
// Callers hold v.mu.
func (v *FakeVM) writePrivate(off int64, data []byte) error {
	for len(data) > 0 {
		page := off &^ (fakePage - 1)
		p, ok := v.overlay[page]
		if !ok {
			p = make([]byte, fakePage)
			if _, err := v.mem.ReadAt(p, page); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			v.overlay[page] = p
		}
		n := copy(p[off-page:], data)
		off, data = off+int64(n), data[n:]
	}
	return nil
}

// readPrivate reads through the overlay. Callers hold v.mu.
func (v *FakeVM) readPrivate(off int64, n int) ([]byte, error) {
	out := make([]byte, 0, n)
	for len(out) < n {
		page := off &^ (fakePage - 1)
		p, ok := v.overlay[page]
		if !ok {
			p = make([]byte, fakePage)
			if _, err := v.mem.ReadAt(p, page); err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
		}
		k := min(n-len(out), int(page+fakePage-off))
		out = append(out, p[off-page:off-page+int64(k)]...)
		off += int64(k)
	}
	return out, nil
}

// PrivateBytes is what the guest of a shared VM has written (its own
// pages); 0 for an owning VM.
func (v *FakeVM) PrivateBytes() int64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return int64(len(v.overlay)) * fakePage
}

// loadDelta puts a saved state's pages back: privately when shared, else
// into the (owned) memory file.
func (v *FakeVM) loadDelta(delta map[int64][]byte) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for off, p := range delta {
		if v.shared {
			v.overlay[off] = p
			continue
		}
		if err := v.auditInPlace(); err != nil {
			return err
		}
		if _, err := v.mem.WriteAt(p, off); err != nil {
			return err
		}
	}
	return nil
}

func encodeDelta(pages map[int64][]byte) []byte {
	offs := make([]int64, 0, len(pages))
	for off := range pages {
		offs = append(offs, off)
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	out := make([]byte, 0, len(offs)*(8+fakePage))
	for _, off := range offs {
		out = binary.BigEndian.AppendUint64(out, uint64(off))
		out = append(out, pages[off]...)
	}
	return out
}

func decodeDelta(raw []byte) (map[int64][]byte, error) {
	out := map[int64][]byte{}
	if len(raw)%(8+fakePage) != 0 {
		return nil, errors.New("truncated delta")
	}
	for len(raw) > 0 {
		off := int64(binary.BigEndian.Uint64(raw))
		out[off] = append([]byte(nil), raw[8:8+fakePage]...)
		raw = raw[8+fakePage:]
	}
	return out, nil
}

// SharedWrites is how many in-place writes into a memory file with more
// than one link the fake was asked to make (and refused): any is a bug in
// the caller, which let a VM write a file others share.
func (f *Fake) SharedWrites() int64 { return f.sharedWrites.Load() }

// auditInPlace refuses an in-place write into the memory file while it has
// more than one link. Callers hold v.mu.
func (v *FakeVM) auditInPlace() error {
	fi, err := v.mem.Stat()
	if err != nil {
		return err
	}
	if n := fi.Sys().(*syscall.Stat_t).Nlink; n > 1 {
		v.f.sharedWrites.Add(1)
		return fmt.Errorf("fake VM %s: an in-place write into a memory file with %d links: %w", v.spec.ID, n, errdefs.ErrInvalidState)
	}
	return nil
}

// ParkedMemory reads n bytes at off of the guest memory a parked
// directory restores to: its memory file with the pages its state file
// carries (a sharing VM's own writes) laid over it.
func ParkedMemory(dir string, off int64, n int) ([]byte, error) {
	buf := make([]byte, n)
	mem, err := os.Open(filepath.Join(dir, MemoryFile))
	if err != nil {
		return nil, err
	}
	defer mem.Close()
	if _, err := mem.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		return buf, nil // no state: the file is all there is
	}
	_, deltaRaw, _ := strings.Cut(string(raw), deltaMarker)
	delta, err := decodeDelta([]byte(deltaRaw))
	if err != nil {
		return nil, err
	}
	for i := range buf {
		pos := off + int64(i)
		if p, ok := delta[pos&^(fakePage-1)]; ok {
			buf[i] = p[pos&(fakePage-1)]
		}
	}
	return buf, nil
}

var _ hypervisor.MemoryUsageReporter = (*FakeVM)(nil)

// MemoryUsage: a shared fake VM's own pages are private, the rest of its
// RAM counts as shared; an owning one's RAM is all private.
func (v *FakeVM) MemoryUsage() (hypervisor.MemoryUsage, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.live(); err != nil {
		return hypervisor.MemoryUsage{}, err
	}
	if !v.shared {
		return hypervisor.MemoryUsage{PrivateBytes: v.spec.MemoryBytes}, nil
	}
	own := int64(len(v.overlay)) * fakePage
	return hypervisor.MemoryUsage{SharedBytes: v.spec.MemoryBytes - own, PrivateBytes: own}, nil
}
