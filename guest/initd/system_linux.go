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

	"github.com/zygote/zygote/guest/agentproto"
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

// PowerOff unmounts the disks (the workload root, its overlay and
// volumes: an ext4 left mounted keeps its journal dirty, and a later
// read-only attachment of the disk could not mount it) and turns the
// machine off. The caller has stopped every process.
func (LinuxSystem) PowerOff() error {
	unmountDisks()
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

// unmountDisks unmounts, deepest first, every mount under the workload
// root and every disk filesystem (ext4, erofs, overlay); one that stays
// busy is remounted read-only, which also leaves an ext4 journal clean.
func unmountDisks() {
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		pre, post, ok := strings.Cut(lines[i], " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 1 {
			continue
		}
		mp, fstype := unescapeOctal(f[4]), g[0]
		under := mp == agentproto.WorkloadRoot || strings.HasPrefix(mp, agentproto.WorkloadRoot+"/")
		if !under && fstype != "ext4" && fstype != "erofs" && fstype != "overlay" {
			continue
		}
		if err := unix.Unmount(mp, 0); err != nil {
			unix.Mount("", mp, "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
		}
	}
}

// unescapeOctal undoes mountinfo's \040-style escapes.
func unescapeOctal(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
