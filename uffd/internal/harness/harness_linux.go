//go:build linux

package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/uffd"
)

const envConfig = "ZYGOTE_UFFD_HARNESS"

// Range is a byte range of the memory file.
type Range struct {
	Offset int64 `json:"offset"`
	Size   int64 `json:"size"`
}

func (r Range) has(off int64) bool { return off >= r.Offset && off < r.Offset+r.Size }

// Config tells the harness process what to do.
type Config struct {
	Socket     string `json:"socket"`
	MemoryFile string `json:"memory_file"`
	// Regions are the file ranges mapped as separate guest memory
	// regions (each its own mmap, like Firecracker's two regions around
	// the 3 GiB MMIO gap). Default: the whole file as one region.
	Regions []Range `json:"regions,omitempty"`
	// PageSizeField is how the handshake states the page size:
	// "page_size" (default), "page_size_kib" (older Firecracker; bytes)
	// or "none" (oldest).
	PageSizeField string `json:"page_size_field,omitempty"`
	Threads       int    `json:"threads,omitempty"`
	// Order is "seq" (each thread walks a contiguous block) or "random"
	// (a seeded permutation split among the threads).
	Order string `json:"order,omitempty"`
	Seed  int64  `json:"seed,omitempty"`
	// Pages, if set, are the file offsets to touch instead of every page.
	Pages []int64 `json:"pages,omitempty"`
	// Write stores a marker in each page's first 8 bytes on first touch
	// (a write fault) and checks it later.
	Write bool `json:"write,omitempty"`
	// RemoveBefore ranges get madvise(MADV_DONTNEED) before any touch;
	// RemoveAfter after the first pass, followed by a second pass. Both
	// must then read as zeros.
	RemoveBefore []Range `json:"remove_before,omitempty"`
	RemoveAfter  []Range `json:"remove_after,omitempty"`
	// HoldAfter: after touching this many pages, report "holding" and
	// block forever (tests kill the process).
	HoldAfter int `json:"hold_after,omitempty"`
	// WaitGo: after the handshake, report "ready" and wait for a line on
	// stdin before touching.
	WaitGo bool `json:"wait_go,omitempty"`
	// DelayMS sleeps between the handshake and the first touch.
	DelayMS int `json:"delay_ms,omitempty"`
	// NoVerify skips the byte checks (timed runs).
	NoVerify bool `json:"no_verify,omitempty"`
}

// Event is one line of the harness's stdout.
type Event struct {
	Event string `json:"event"` // ready, holding, result, error
	PID   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
	Result
}

// Result reports a run.
type Result struct {
	Touched      int    `json:"touched,omitempty"`
	Checked      int    `json:"checked,omitempty"` // pages whose bytes were compared
	ZeroChecked  int    `json:"zero_checked,omitempty"`
	Mismatches   int    `json:"mismatches,omitempty"`
	FirstProblem string `json:"first_problem,omitempty"`
	// TouchWallNS is the wall time of the first pass (all threads).
	TouchWallNS int64 `json:"touch_wall_ns,omitempty"`
	// Latencies of first touches, in ns.
	P50NS  int64 `json:"p50_ns,omitempty"`
	P99NS  int64 `json:"p99_ns,omitempty"`
	MaxNS  int64 `json:"max_ns,omitempty"`
	MeanNS int64 `json:"mean_ns,omitempty"`
}

// Main runs the harness and exits if this process was started by Start;
// otherwise it returns at once. Call it first in TestMain.
func Main() {
	raw, ok := os.LookupEnv(envConfig)
	if !ok {
		return
	}
	var cfg Config
	out := json.NewEncoder(os.Stdout)
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		out.Encode(Event{Event: "error", Error: err.Error()})
		os.Exit(2)
	}
	if err := run(cfg, out); err != nil {
		out.Encode(Event{Event: "error", Error: err.Error()})
		os.Exit(1)
	}
	os.Exit(0)
}

// vm is the harness's guest memory.
type vm struct {
	cfg     Config
	file    *os.File
	regions []vmRegion
	u       *uffd.Userfaultfd
	conn    *net.UnixConn
}

type vmRegion struct {
	Range
	mem []byte
}

const pageSize = 4096

func run(cfg Config, out *json.Encoder) error {
	// A goroutine blocked in a userfault cannot be stopped for GC: never
	// collect (the process is short-lived), and give every toucher a P.
	debug.SetGCPercent(-1)
	cfg.Threads = max(cfg.Threads, 1)
	runtime.GOMAXPROCS(max(runtime.NumCPU(), cfg.Threads+1))

	v, err := setup(cfg)
	if err != nil {
		return err
	}
	out.Encode(Event{Event: "ready", PID: os.Getpid()})
	if cfg.WaitGo {
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			return fmt.Errorf("waiting for go: %w", err)
		}
	}
	for _, r := range cfg.RemoveBefore {
		if err := v.dontneed(r); err != nil {
			return err
		}
	}
	time.Sleep(time.Duration(cfg.DelayMS) * time.Millisecond)

	pages := v.touchList()
	var res Result
	lat, wall, err := v.pass(pages, true, cfg.RemoveBefore, nil, &res, out)
	if err != nil {
		return err
	}
	res.TouchWallNS = wall.Nanoseconds()
	summarize(lat, &res)
	if len(cfg.RemoveAfter) > 0 {
		for _, r := range cfg.RemoveAfter {
			if err := v.dontneed(r); err != nil {
				return err
			}
		}
		if _, _, err := v.pass(pages, false, append(cfg.RemoveBefore, cfg.RemoveAfter...), cfg.RemoveAfter, &res, out); err != nil {
			return err
		}
	}
	res.Touched = len(pages)
	return out.Encode(Event{Event: "result", Result: res})
}

func setup(cfg Config) (*vm, error) {
	f, err := os.Open(cfg.MemoryFile)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	v := &vm{cfg: cfg, file: f}
	regions := cfg.Regions
	if len(regions) == 0 {
		regions = []Range{{0, st.Size()}}
	}
	u, err := uffd.Open(uffd.NonBlocking)
	if err != nil {
		return nil, err
	}
	if _, err := u.API(uffd.FeatureEventRemove); err != nil {
		return nil, err
	}
	v.u = u
	var maps []uffd.Mapping
	for _, r := range regions {
		mem, err := unix.Mmap(-1, 0, int(r.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			return nil, fmt.Errorf("mmap %d bytes: %w", r.Size, err)
		}
		base := uint64(uintptr(unsafe.Pointer(&mem[0])))
		if _, err := u.Register(base, uint64(r.Size), uffd.RegisterMissing); err != nil {
			return nil, err
		}
		v.regions = append(v.regions, vmRegion{Range: r, mem: mem})
		m := uffd.Mapping{BaseHostVirtAddr: base, Size: uint64(r.Size), Offset: uint64(r.Offset)}
		switch cfg.PageSizeField {
		case "", "page_size":
			m.PageSize = pageSize
		case "page_size_kib":
			m.PageSizeKiB = pageSize
		case "none":
		default:
			return nil, fmt.Errorf("page_size_field %q", cfg.PageSizeField)
		}
		maps = append(maps, m)
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: cfg.Socket, Net: "unix"})
	if err != nil {
		return nil, err
	}
	v.conn = conn // kept open, as Firecracker does
	if err := uffd.SendHandshake(conn, maps, u.FD()); err != nil {
		return nil, err
	}
	return v, nil
}

// page is one guest page to touch: its file offset and its memory.
type page struct {
	off int64
	mem []byte
}

func (v *vm) page(off int64) (page, bool) {
	for _, r := range v.regions {
		if r.has(off) {
			p := off - r.Offset
			return page{off: off, mem: r.mem[p : p+pageSize : p+pageSize]}, true
		}
	}
	return page{}, false
}

func (v *vm) touchList() []page {
	var pages []page
	if len(v.cfg.Pages) > 0 {
		for _, off := range v.cfg.Pages {
			if p, ok := v.page(off / pageSize * pageSize); ok {
				pages = append(pages, p)
			}
		}
	} else {
		for _, r := range v.regions {
			for off := r.Offset; off < r.Offset+r.Size; off += pageSize {
				p, _ := v.page(off)
				pages = append(pages, p)
			}
		}
	}
	if v.cfg.Order == "random" {
		rand.New(rand.NewSource(v.cfg.Seed)).Shuffle(len(pages), func(i, j int) { pages[i], pages[j] = pages[j], pages[i] })
	}
	return pages
}

func (v *vm) dontneed(r Range) error {
	for _, reg := range v.regions {
		lo, hi := max(r.Offset, reg.Offset), min(r.Offset+r.Size, reg.Offset+reg.Size)
		if lo >= hi {
			continue
		}
		if err := unix.Madvise(reg.mem[lo-reg.Offset:hi-reg.Offset], unix.MADV_DONTNEED); err != nil {
			return fmt.Errorf("madvise DONTNEED [%d,%d): %w", lo, hi, err)
		}
	}
	return nil
}

var sink atomic.Uint64

func marker(off int64) uint64 { return uint64(off) ^ 0x5a5a_0000_c0de_0000 }

// pass touches every page across the threads; first marks the first pass
// (which times first touches and writes markers).
func (v *vm) pass(pages []page, first bool, zeroed, markerLost []Range, res *Result, out *json.Encoder) ([]int64, time.Duration, error) {
	t := v.cfg.Threads
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		lat     = make([][]int64, t)
		touched atomic.Int64
	)
	start := time.Now()
	for i := range t {
		part := pages[len(pages)*i/t : len(pages)*(i+1)/t]
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := make([]byte, pageSize)
			var l []int64
			if first {
				l = make([]int64, 0, len(part))
			}
			for _, p := range part {
				t0 := time.Now()
				if first && v.cfg.Write {
					binary.LittleEndian.PutUint64(p.mem, marker(p.off))
				} else {
					sink.Add(uint64(p.mem[0]))
				}
				if first {
					l = append(l, int64(time.Since(t0)))
				}
				if n := touched.Add(1); first && v.cfg.HoldAfter > 0 && int(n) == v.cfg.HoldAfter {
					mu.Lock()
					out.Encode(Event{Event: "holding", Result: Result{Touched: int(n)}})
					mu.Unlock()
					select {} // until killed
				}
				if v.cfg.NoVerify {
					continue
				}
				problem, zero := v.check(p, want, zeroed, markerLost)
				mu.Lock()
				res.Checked++
				if zero {
					res.ZeroChecked++
				}
				if problem != "" {
					res.Mismatches++
					if res.FirstProblem == "" {
						res.FirstProblem = problem
					}
				}
				mu.Unlock()
			}
			lat[i] = l
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	var all []int64
	for _, l := range lat {
		all = append(all, l...)
	}
	return all, wall, nil
}

// check compares a touched page with what it must hold: zeros in zeroed
// ranges, else the file's bytes; with Write, the marker in the first 8
// bytes unless a later DONTNEED (markerLost) dropped it.
func (v *vm) check(p page, want []byte, zeroed, markerLost []Range) (problem string, zero bool) {
	in := func(rs []Range) bool {
		for _, r := range rs {
			if r.has(p.off) {
				return true
			}
		}
		return false
	}
	zero = in(zeroed)
	if zero {
		clear(want)
	} else if _, err := v.file.ReadAt(want, p.off); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Sprintf("read file at %d: %v", p.off, err), zero
	}
	if v.cfg.Write && !in(markerLost) {
		binary.LittleEndian.PutUint64(want, marker(p.off))
	}
	if !bytes.Equal(p.mem, want) {
		i := 0
		for i < pageSize && p.mem[i] == want[i] {
			i++
		}
		return fmt.Sprintf("page at file offset %d (zero=%v): byte %d is %#x, want %#x", p.off, zero, i, p.mem[i], want[i]), zero
	}
	return "", zero
}

func summarize(lat []int64, res *Result) {
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	var sum int64
	for _, l := range lat {
		sum += l
	}
	res.P50NS = lat[len(lat)/2]
	res.P99NS = lat[min(len(lat)-1, len(lat)*99/100)]
	res.MaxNS = lat[len(lat)-1]
	res.MeanNS = sum / int64(len(lat))
}

// Proc is a running harness process.
type Proc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan Event
	waited chan error // the process's exit
	stderr bytes.Buffer
}

// Start launches the harness (this test binary, re-executed).
func Start(cfg Config) (*Proc, error) {
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envConfig+"="+string(raw))
	p := &Proc{cmd: cmd, events: make(chan Event, 16), waited: make(chan error, 1)}
	cmd.Stderr = &p.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ev Event
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				p.events <- ev
			}
		}
		close(p.events)
		p.waited <- cmd.Wait()
	}()
	return p, nil
}

// PID is the harness's process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Go releases a WaitGo harness.
func (p *Proc) Go() error {
	_, err := io.WriteString(p.stdin, "go\n")
	return err
}

// Next returns the next event named want, skipping others; a harness that
// exits or reports an error first yields an error.
func (p *Proc) Next(ctx context.Context, want string) (Event, error) {
	for {
		select {
		case ev, ok := <-p.events:
			if !ok {
				err := <-p.waited
				p.waited <- err
				return Event{}, fmt.Errorf("harness exited (%v) before %q; stderr: %s", err, want, p.stderr.String())
			}
			if ev.Event == "error" {
				return ev, fmt.Errorf("harness: %s", ev.Error)
			}
			if ev.Event == want {
				return ev, nil
			}
		case <-ctx.Done():
			return Event{}, fmt.Errorf("harness: waiting for %q: %w", want, ctx.Err())
		}
	}
}

// Result waits for the run's result and the process's exit.
func (p *Proc) Result(ctx context.Context) (Result, error) {
	ev, err := p.Next(ctx, "result")
	if err != nil {
		return Result{}, err
	}
	select {
	case err := <-p.waited:
		p.waited <- err
		if err != nil {
			return ev.Result, fmt.Errorf("harness exit: %w; stderr: %s", err, p.stderr.String())
		}
	case <-ctx.Done():
		return ev.Result, ctx.Err()
	}
	return ev.Result, nil
}

// Kill sends SIGKILL and reaps the process.
func (p *Proc) Kill() {
	p.cmd.Process.Kill()
	for range p.events {
	}
	err := <-p.waited
	p.waited <- err
}
