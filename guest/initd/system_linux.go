package initd

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// LinuxSystem is the System of a real guest. It must run as root (PID 1).
type LinuxSystem struct{}

var _ System = LinuxSystem{}

func (LinuxSystem) Hostname() string {
	h, _ := os.Hostname()
	return h
}

// SetHostname sets the kernel hostname and rewrites /etc/hostname and the
// hostname line of /etc/hosts.
func (LinuxSystem) SetHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	if err := os.WriteFile("/etc/hostname", []byte(name+"\n"), 0o644); err != nil {
		return err
	}
	return os.WriteFile("/etc/hosts", []byte(etcHosts(name)), 0o644)
}

func etcHosts(hostname string) string {
	return "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t" + hostname + "\n"
}

func (LinuxSystem) StepClock(to time.Time) (time.Duration, error) {
	before := time.Now()
	ts := unix.NsecToTimespec(to.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return 0, fmt.Errorf("clock_settime: %w", err)
	}
	return to.Sub(before), nil
}

// AddEntropy writes seed into the input pool with RNDADDENTROPY, crediting
// 8 bits per byte: the host's bytes come from its own CSPRNG.
func (LinuxSystem) AddEntropy(seed []byte) (int, error) {
	f, err := os.OpenFile("/dev/random", os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	bits := len(seed) * 8
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(seed))
	binary.NativeEndian.PutUint32(buf[0:4], uint32(bits))
	binary.NativeEndian.PutUint32(buf[4:8], uint32(len(seed)))
	copy(buf[8:], seed)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
		return 0, fmt.Errorf("RNDADDENTROPY: %w", e)
	}
	return bits, nil
}

// ReseedRNG forces the CRNG to reseed from the input pool now, rather than
// at its next scheduled reseed (up to a minute away): two forks of one
// snapshot must stop producing the same random numbers at once.
func (LinuxSystem) ReseedRNG() error {
	f, err := os.OpenFile("/dev/random", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", e)
	}
	return nil
}

func (LinuxSystem) EntropyAvail() int {
	b, err := os.ReadFile("/proc/sys/kernel/random/entropy_avail")
	if err != nil {
		return -1
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

func (LinuxSystem) Sync() { unix.Sync() }

// KillAll signals every process except the caller (kill(-1, sig)).
func (LinuxSystem) KillAll(sig syscall.Signal) error {
	if err := unix.Kill(-1, sig); err != nil && err != unix.ESRCH {
		return err
	}
	return nil
}

func (LinuxSystem) PowerOff() error {
	return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}
