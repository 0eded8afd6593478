package e2e

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
)

// hostDirtyPages returns the guest-physical page numbers (file offset /
// 4096 of the memory file, which is guest-physical below 2 GiB on q35)
// whose host page-cache page is dirty: the pages the next standby's fsync
// writes. It reads QEMU's pagemap for the memory file's mapping and the
// host's /proc/kpageflags (KPF_DIRTY).
func hostDirtyPages(b *testing.B, pid int, memPath string) []uint64 {
	p, _ := hostDirtyPagesFlags(b, pid, memPath)
	return p
}

// hostDirtyPagesFlags also returns how many of them the host holds in
// large folios (compound pages).
func hostDirtyPagesFlags(b *testing.B, pid int, memPath string) ([]uint64, int) {
	b.Helper()
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		b.Fatal(err)
	}
	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer pm.Close()
	kf, err := os.Open("/proc/kpageflags")
	if err != nil {
		b.Fatal(err)
	}
	defer kf.Close()
	var out []uint64
	large := 0
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[5] != memPath {
			continue
		}
		var lo, hi uint64
		fmt.Sscanf(f[0], "%x-%x", &lo, &hi)
		off, _ := strconv.ParseUint(f[2], 16, 64)
		n := (hi - lo) / 4096
		buf := make([]byte, n*8)
		if _, err := pm.ReadAt(buf, int64(lo/4096*8)); err != nil {
			b.Fatal(err)
		}
		flag := make([]byte, 8)
		for i := uint64(0); i < n; i++ {
			e := binary.LittleEndian.Uint64(buf[i*8:])
			if e&(1<<63) == 0 {
				continue
			}
			pfn := e & (1<<55 - 1)
			if _, err := kf.ReadAt(flag, int64(pfn*8)); err != nil {
				b.Fatal(err)
			}
			fl := binary.LittleEndian.Uint64(flag)
			if fl&(1<<4) != 0 { // KPF_DIRTY
				out = append(out, off/4096+i)
				if fl&(3<<15) != 0 {
					large++
				}
			}
		}
	}
	return out, large
}

// folioHistogram counts the host folios (by size in KiB) backing the
// present pages of QEMU's mapping of the memory file.
func folioHistogram(b *testing.B, pid int, memPath string) map[int]int {
	maps, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	pm, _ := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	defer pm.Close()
	kf, _ := os.Open("/proc/kpageflags")
	defer kf.Close()
	hist := map[int]int{}
	for _, line := range strings.Split(string(maps), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[5] != memPath {
			continue
		}
		var lo, hi uint64
		fmt.Sscanf(f[0], "%x-%x", &lo, &hi)
		n := (hi - lo) / 4096
		buf := make([]byte, n*8)
		pm.ReadAt(buf, int64(lo/4096*8))
		flag := make([]byte, 8)
		run := 0
		for i := uint64(0); i <= n; i++ {
			var fl uint64
			if i < n {
				e := binary.LittleEndian.Uint64(buf[i*8:])
				if e&(1<<63) != 0 {
					kf.ReadAt(flag, int64((e&(1<<55-1))*8))
					fl = binary.LittleEndian.Uint64(flag)
				}
			}
			if fl&(1<<16) != 0 && run > 0 { // tail of the current folio
				run++
				continue
			}
			if run > 0 {
				hist[run*4]++
			}
			run = 0
			if fl != 0 {
				run = 1
			}
		}
	}
	return hist
}

// kpageflags bits (include/uapi/linux/kernel-page-flags.h).
var kpfNames = []struct {
	bit  uint
	name string
}{
	{10, "buddy (free)"}, {7, "slab"}, {26, "pgtable"}, {12, "anon"}, {22, "thp"},
	{5, "lru (page cache / shmem)"}, {20, "nopage"},
}

// classify names a guest page by its guest kpageflags.
func classify(flags uint64) string {
	for _, k := range kpfNames {
		if flags&(1<<k.bit) != 0 {
			name := k.name
			if k.bit == 12 && flags&(1<<22) != 0 {
				name = "anon thp"
			}
			if k.bit == 5 && flags&(1<<14) != 0 { // KPF_SWAPBACKED
				name = "lru shmem/tmpfs"
			}
			return name
		}
	}
	if flags == 0 {
		return "no flags (kernel: text, percpu, vmalloc, …)"
	}
	return fmt.Sprintf("other %#x", flags)
}

// BenchmarkDirtyBreakdown attributes a re-standby's written pages: after a
// restore of a 256 MiB guest, how many guest pages are dirty in the host
// page cache at each step (restore, idle, an exec, dirtying 1 %), and what
// the guest kernel says each dirty page is.
func BenchmarkDirtyBreakdown(b *testing.B) {
	d := benchDaemon(b)
	name := "dirt"
	if _, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: name, Size: "256MB"}); err != nil {
		b.Fatal(err)
	}
	if _, err := d.c.WaitForState(ctx, name, "Running", 3*time.Minute); err != nil {
		b.Fatal(err)
	}
	d.sh(name, "mount -o remount,size=90% /dev/shm; dd if=/dev/zero of=/dev/shm/warm bs=1M count=32 2>/dev/null; rm /dev/shm/warm")
	for k := 0; k < 3; k++ {
		d.c.StandbyInstance(ctx, name)
		d.c.RestoreInstance(ctx, name)
	}
	in, _ := d.c.GetInstance(ctx, name)
	mem := filepath.Join(d.instanceDir(in.ID), "memory")
	for i := 0; i < b.N; i++ {
		if _, err := d.c.StandbyInstance(ctx, name); err != nil {
			b.Fatal(err)
		}
		if _, err := d.c.RestoreInstance(ctx, name); err != nil {
			b.Fatal(err)
		}
		pid := d.vmmPIDs()[0]
		rows := [][]string{{"step", "dirty pages", "MiB", "in host large folios", "2 MiB regions"}}
		first := map[uint64]string{}
		step := func(what string) []uint64 {
			p, large := hostDirtyPagesFlags(b, pid, mem)
			regions := map[uint64]bool{}
			for _, pfn := range p {
				regions[pfn/512] = true
				if _, ok := first[pfn]; !ok {
					first[pfn] = what
				}
			}
			rows = append(rows, []string{what, strconv.Itoa(len(p)), fmt.Sprintf("%.1f", float64(len(p))/256), strconv.Itoa(large), strconv.Itoa(len(regions))})
			return p
		}
		step("after restore returned")
		fmt.Println("host folios (KiB: count) backing QEMU's mapping:", folioHistogram(b, pid, mem))
		if sm, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid)); err == nil {
			if i := strings.Index(string(sm), mem); i >= 0 {
				if j := strings.Index(string(sm[i:]), "VmFlags"); j >= 0 {
					fmt.Println(strings.SplitN(string(sm[i+j:]), "\n", 2)[0])
				}
			}
		}
		time.Sleep(3 * time.Second)
		step("3 s idle")
		d.sh(name, "true")
		step("exec true")
		d.sh(name, "rm -f /dev/shm/dirty; dd if=/dev/zero of=/dev/shm/dirty bs=1M count=2 2>/dev/null")
		dirty := step("dd 1 % (2 MiB)")
		var kpf bytes.Buffer
		if code, err := d.c.Exec(ctx, name, client.ExecOptions{Command: []string{"cat", "/proc/kpageflags"}, Stdout: &kpf}); err != nil || code != 0 {
			b.Fatalf("read guest kpageflags: %d %v", code, err)
		}
		step("after reading kpageflags")
		g := kpf.Bytes()
		counts := map[string]int{}
		for _, pfn := range dirty {
			if int(pfn*8+8) > len(g) {
				counts["beyond guest kpageflags"]++
				continue
			}
			counts[first[pfn]+": "+classify(binary.LittleEndian.Uint64(g[pfn*8:]))]++
		}
		table("dirty guest pages (host page cache) after a restore, 256 MiB guest", rows)
		var keys []string
		for k := range counts {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return counts[keys[i]] > counts[keys[j]] })
		crows := [][]string{{"guest page kind (at read time)", "pages", "MiB"}}
		for _, k := range keys {
			crows = append(crows, []string{k, strconv.Itoa(counts[k]), fmt.Sprintf("%.1f", float64(counts[k])/256)})
		}
		table("what the dirty pages are", crows)
		before := loopWritten(b, d.dataDir)
		if err := syncPath(mem); err != nil {
			b.Fatal(err)
		}
		fmt.Printf("fsync of the running VM's memory file wrote %.1f MiB\n", float64(loopWritten(b, d.dataDir)-before)/(1<<20))
		before = loopWritten(b, d.dataDir)
		if _, err := d.c.StandbyInstance(ctx, name); err != nil {
			b.Fatal(err)
		}
		written := loopWritten(b, d.dataDir) - before
		fmt.Printf("standby wrote %.1f MiB for %d dirty pages (%.1f MiB)\n", float64(written)/(1<<20), len(dirty), float64(len(dirty))/256)
		b.ReportMetric(float64(len(dirty))/256, "dirty-MiB")
		b.ReportMetric(float64(written)/(1<<20), "written-MiB")
		if _, err := d.c.RestoreInstance(ctx, name); err != nil {
			b.Fatal(err)
		}
	}
}

func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
