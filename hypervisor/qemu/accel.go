package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// kvmProbeTimeout bounds the probe boot. A working KVM prints the kernel
// banner in well under a second; a broken one (seen on nested hosts where
// /dev/kvm opens and KVM_CREATE_VM succeeds but the guest hangs) prints
// nothing at all.
const kvmProbeTimeout = 8 * time.Second

// probeResult is cached per host boot, QEMU version and kernel, so only the
// first daemon start after a reboot pays for the probe.
type probeResult struct {
	BootID      string `json:"boot_id"`
	QEMUVersion string `json:"qemu_version"`
	Kernel      string `json:"kernel"`
	KVMWorks    bool   `json:"kvm_works"`
	Reason      string `json:"reason"`
}

// chooseAccel resolves Config.Accel ("auto", "kvm", "tcg") for a boot with
// the given kernel. "auto" means KVM only when a real guest boots under it.
func (d *Driver) chooseAccel(ctx context.Context, kernel string) (string, error) {
	switch d.cfg.Accel {
	case "kvm", "tcg":
		return d.cfg.Accel, nil
	case "", "auto":
	default:
		return "", fmt.Errorf("qemu: unknown accelerator %q (want auto, kvm or tcg)", d.cfg.Accel)
	}
	d.accelMu.Lock()
	defer d.accelMu.Unlock()
	if d.accel != "" {
		return d.accel, nil
	}
	// Not on the request's context: a probe cut short by ^C would read as
	// "KVM does not work" and be cached until the host reboots.
	res := d.probeKVM(context.WithoutCancel(ctx), kernel)
	d.accel = "tcg"
	if res.KVMWorks {
		d.accel = "kvm"
	}
	d.log.Info("qemu accelerator chosen", "accel", d.accel, "reason", res.Reason)
	return d.accel, nil
}

func (d *Driver) probeKVM(ctx context.Context, kernel string) probeResult {
	res := probeResult{BootID: bootID(), QEMUVersion: d.version, Kernel: kernel}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		res.Reason = "/dev/kvm unusable: " + err.Error()
		return res
	}
	f.Close()
	cachePath := ""
	if d.cfg.ProbeCacheDir != "" {
		cachePath = filepath.Join(d.cfg.ProbeCacheDir, "kvm-probe.json")
		var cached probeResult
		if raw, err := os.ReadFile(cachePath); err == nil && json.Unmarshal(raw, &cached) == nil &&
			cached.BootID == res.BootID && cached.QEMUVersion == res.QEMUVersion && cached.Kernel == kernel {
			return cached
		}
	}
	res.KVMWorks, res.Reason = bootsUnderKVM(ctx, d.cfg.Binary, kernel)
	if cachePath != "" {
		if raw, err := json.Marshal(res); err == nil {
			os.MkdirAll(filepath.Dir(cachePath), 0o755)
			writeFileAtomic(cachePath, raw)
		}
	}
	return res
}

// bootsUnderKVM boots kernel under KVM with no initramfs and waits for its
// banner on the serial console.
func bootsUnderKVM(ctx context.Context, binary, kernel string) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, kvmProbeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "-machine", "q35,accel=kvm", "-m", "128M",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernel, "-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1", "-serial", "stdio")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return false, err.Error()
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return false, "start probe: " + err.Error()
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "Linux version") {
			return true, "a guest kernel boots under KVM"
		}
	}
	if ctx.Err() != nil {
		return false, fmt.Sprintf("/dev/kvm opens but a guest kernel printed nothing in %s under KVM", kvmProbeTimeout)
	}
	return false, "QEMU failed under KVM: " + strings.TrimSpace(stderr.String())
}

func bootID() string {
	raw, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(raw))
}

// hostTSCKHz reads the host's TSC frequency; 0 when unknown.
func hostTSCKHz() int {
	if raw, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil {
			return v
		}
	}
	raw, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			if mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				return int(mhz * 1000)
			}
		}
	}
	return 0
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
