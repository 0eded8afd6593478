package qemu_test

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/guest/agentproto"
)

// testSlot is a network namespace this test made, holding a TAP with the
// gateway address: what a network slot gives a VM, minus NAT. All traffic
// of the tests stays inside it.
type testSlot struct {
	name string
	tap  *os.File
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newSlot creates a namespace with a persistent TAP "tap0" holding
// agentproto.GatewayCIDR, and opens the TAP (IFF_TAP|IFF_NO_PI) from
// inside the namespace. Both go away when the test ends.
func newSlot(t *testing.T) *testSlot {
	t.Helper()
	var b [4]byte
	rand.Read(b[:])
	s := &testSlot{name: "zgt-" + hex.EncodeToString(b[:])}
	ipCmd(t, "netns", "add", s.name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", s.name).Run() })
	ipCmd(t, "-n", s.name, "tuntap", "add", "dev", "tap0", "mode", "tap")
	ipCmd(t, "-n", s.name, "addr", "add", agentproto.GatewayCIDR, "dev", "tap0")
	ipCmd(t, "-n", s.name, "link", "set", "tap0", "up")
	ipCmd(t, "-n", s.name, "link", "set", "lo", "up")
	s.tap = s.openTAP(t)
	t.Cleanup(func() { s.tap.Close() })
	return s
}

// openTAP opens /dev/net/tun while the calling thread is in the slot's
// namespace (a TUN fd belongs to the namespace it was opened in), then
// attaches it to tap0. The thread is switched back before it is unlocked.
func (s *testSlot) openTAP(t *testing.T) *os.File {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	ns, err := os.Open("/run/netns/" + s.name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatalf("setns: %v", err)
	}
	fd, openErr := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		panic("cannot return to the test's network namespace: " + err.Error())
	}
	if openErr != nil {
		t.Fatalf("open /dev/net/tun: %v", openErr)
	}
	ifr, err := unix.NewIfreq("tap0")
	if err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(ifr))); e != 0 {
		unix.Close(fd)
		t.Fatalf("TUNSETIFF tap0: %v", e)
	}
	return os.NewFile(uintptr(fd), "tap0")
}

// inNS runs fn on an OS thread switched into the slot's namespace, so the
// sockets fn creates belong to it (Go's setns pitfall: only the calling
// thread switches; it is switched back before being unlocked).
func (s *testSlot) inNS(t *testing.T, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	ns, err := os.Open("/run/netns/" + s.name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatalf("setns: %v", err)
	}
	defer func() {
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			panic("cannot return to the test's network namespace: " + err.Error())
		}
	}()
	fn()
}

// httpGet fetches url from inside the slot (a plain HTTP/1.0 GET on a
// socket made in the namespace) and returns the body.
func (s *testSlot) httpGet(t *testing.T, addr, path string) (string, error) {
	var conn net.Conn
	var err error
	s.inNS(t, func() { conn, err = net.DialTimeout("tcp", addr, 5*time.Second) })
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.0\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(b), err
}

// serve serves body at every path on addr inside the slot until the test
// ends.
func (s *testSlot) serve(t *testing.T, addr, body string) {
	var ln net.Listener
	var err error
	s.inNS(t, func() { ln, err = net.Listen("tcp", addr) })
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) })}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }() // ends at Close below
	t.Cleanup(func() { srv.Close(); <-done })
}

var touched byte

// pageDirty reports whether the host page cache holds the first page of
// path dirty (written, not yet written back): it maps the page, finds its
// frame in /proc/self/pagemap and reads KPF_DIRTY from /proc/kpageflags
// (root only).
func pageDirty(t *testing.T, path string) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	touched = m[0] // fault the page in
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	var ent [8]byte
	if _, err := pm.ReadAt(ent[:], int64(uintptr(unsafe.Pointer(&m[0]))/4096*8)); err != nil {
		t.Fatal(err)
	}
	v := binary.LittleEndian.Uint64(ent[:])
	pfn := v & (1<<55 - 1)
	if v&(1<<63) == 0 || pfn == 0 {
		t.Fatalf("pagemap entry %#x: page not present or PFN hidden", v)
	}
	kf, err := os.Open("/proc/kpageflags")
	if err != nil {
		t.Fatal(err)
	}
	defer kf.Close()
	if _, err := kf.ReadAt(ent[:], int64(pfn*8)); err != nil {
		t.Fatal(err)
	}
	const kpfDirty, kpfWriteback = 4, 8
	flags := binary.LittleEndian.Uint64(ent[:])
	return flags&(1<<kpfDirty|1<<kpfWriteback) != 0
}
