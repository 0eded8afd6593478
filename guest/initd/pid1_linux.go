package initd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/zygote/zygote/guest/agentproto"
	"golang.org/x/sys/unix"
)

// Main is zygote-init: PID 1 of a zygote guest. It mounts the pseudo file
// systems, loads the kernel modules listed in the initramfs, finds the
// agent's virtio-serial port and serves the host on it forever. If it
// cannot serve, it powers the machine off rather than leave a VM that
// cannot be reached (the reason is on the console).
func Main() {
	start := time.Now()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{
		Level: logLevel(),
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	})).With("component", "zygote-init")
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "zygote-init: must run as PID 1 of a zygote guest (it mounts, loads modules and powers off)")
		os.Exit(2)
	}
	catchSignals(log)
	os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	os.Setenv("HOME", "/root")

	for _, err := range mountAll() {
		log.Warn("mount", "err", err)
	}
	setupDevLinks(log)
	ensureBusybox(log)
	writeEtc(log)
	if err := loopbackUp(); err != nil {
		log.Warn("bring up lo", "err", err)
	}
	modStart := time.Now()
	loadModules(log)
	modTime := time.Since(modStart)

	ctx := context.Background()
	findCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	path, err := FindVirtioPort(findCtx, agentproto.AgentPortName)
	cancel()
	if err != nil {
		fatal(log, err)
	}
	port, err := OpenVirtioPort(path)
	if err != nil {
		fatal(log, err)
	}
	var uts unix.Utsname
	unix.Uname(&uts)
	bootID, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	log.Info("agent ready", "port", path, "since_start", time.Since(start).Round(time.Millisecond), "modules", modTime.Round(time.Millisecond))

	a := New(Config{
		Port:    port,
		System:  LinuxSystem{},
		Logger:  log,
		BootID:  strings.TrimSpace(string(bootID)),
		Kernel:  unix.ByteSliceToString(uts.Release[:]),
		ReapAll: true,
		// Provisioner: the NIC and the workload's root from disks.
		Provisioner: LinuxProvisioner{Log: log},
	})
	err = a.Run(ctx)
	fatal(log, fmt.Errorf("agent stopped: %w", err))
}

func fatal(log *slog.Logger, err error) {
	log.Error("cannot serve the host; powering off", "err", err)
	unix.Sync()
	time.Sleep(100 * time.Millisecond) // let the console drain
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

// logLevel is Debug when the kernel command line has zygote.debug=1.
func logLevel() slog.Level {
	b, _ := os.ReadFile("/proc/cmdline")
	if b == nil {
		// /proc is not mounted yet this early; peek via a private mount.
		if unix.Mount("proc", "/proc", "proc", 0, "") == nil {
			b, _ = os.ReadFile("/proc/cmdline")
		}
	}
	for _, f := range strings.Fields(string(b)) {
		if f == "zygote.debug=1" {
			return slog.LevelDebug
		}
	}
	return slog.LevelInfo
}

// catchSignals keeps PID 1 alive: the kernel delivers to init only the
// signals it handles, and Go's default action for most is to exit, which
// panics the kernel. Notify (not Ignore) so that children, which inherit
// ignored dispositions across exec, keep the default ones.
func catchSignals(log *slog.Logger) {
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPWR)
	go func() { // lives as long as PID 1
		for s := range ch {
			log.Info("ignoring signal", "signal", s)
		}
	}()
}

type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

var mounts = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666,gid=5"},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
}

// mountAll mounts the pseudo file systems; already mounted ones are fine.
func mountAll() []error {
	var errs []error
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		if mounted(m.target) {
			continue
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err))
		}
	}
	return errs
}

// mounted reports whether target is a mount point (per /proc/self/mounts).
func mounted(target string) bool {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) > 1 && fs[1] == target {
			return true
		}
	}
	return false
}

func setupDevLinks(log *slog.Logger) {
	for link, target := range map[string]string{
		"/dev/fd":     "/proc/self/fd",
		"/dev/stdin":  "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1",
		"/dev/stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, link); err != nil && !errors.Is(err, os.ErrExist) {
			log.Warn("symlink", "link", link, "err", err)
		}
	}
}

// ensureBusybox installs the applet links if the initramfs lacks them. It
// runs before the reaper exists, so os/exec is safe here.
func ensureBusybox(log *slog.Logger) {
	if _, err := os.Stat("/bin/sh"); err == nil {
		return
	}
	if _, err := os.Stat(agentproto.InitramfsBusybox); err != nil {
		log.Warn("no /bin/sh and no busybox in the initramfs")
		return
	}
	for _, d := range []string{"/bin", "/sbin", "/usr/bin", "/usr/sbin"} {
		os.MkdirAll(d, 0o755)
	}
	if out, err := exec.Command(agentproto.InitramfsBusybox, "--install", "-s").CombinedOutput(); err != nil {
		log.Warn("busybox --install", "err", err, "output", string(out))
	}
}

func writeEtc(log *slog.Logger) {
	os.MkdirAll("/etc", 0o755)
	h, _ := os.Hostname()
	files := map[string]string{"/etc/hosts": etcHosts(h), "/etc/hostname": h + "\n"}
	for p, content := range files {
		if _, err := os.Stat(p); err == nil {
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			log.Warn("write", "file", p, "err", err)
		}
	}
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// loadModules loads the modules listed in the initramfs, in order. A module
// already present (EEXIST) is fine; other failures are logged and loading
// goes on, so that one bad module does not cost the agent channel.
func loadModules(log *slog.Logger) {
	b, err := os.ReadFile(agentproto.InitramfsModuleOrder)
	if err != nil {
		log.Warn("no module list", "err", err)
		return
	}
	for _, name := range strings.Fields(string(b)) {
		t := time.Now()
		if err := loadModule(filepath.Join(agentproto.InitramfsModulesDir, name)); err != nil {
			log.Warn("load module", "module", name, "err", err)
			continue
		}
		log.Debug("module loaded", "module", name, "took", time.Since(t))
	}
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if errors.Is(err, unix.ENOSYS) {
		var img []byte
		if img, err = os.ReadFile(path); err == nil {
			err = unix.InitModule(img, "")
		}
	}
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}
