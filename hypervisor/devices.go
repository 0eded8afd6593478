package hypervisor

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/zygote/zygote/errdefs"
)

// MaxSerial is the longest disk serial a virtio-blk device reports
// (VIRTIO_BLK_ID_BYTES).
const MaxSerial = 20

// DiskPath returns d's file as an absolute path inside spec.Dir.
func (s Spec) DiskPath(d Disk) string {
	if filepath.IsAbs(d.Path) {
		return filepath.Clean(d.Path)
	}
	return filepath.Join(s.Dir, d.Path)
}

// CheckDevices validates spec's disks and NIC the same way for every
// driver: each disk is a regular file inside the instance directory (a
// driver never reads outside it, DESIGN invariant 1) with a unique, valid
// serial; a NIC has an open TAP and a unicast MAC. Errors are
// errdefs.ErrInvalidArgument.
func CheckDevices(spec Spec) error {
	seen := map[string]bool{}
	for i, d := range spec.Disks {
		if err := checkSerial(d.Serial); err != nil {
			return fmt.Errorf("disk %d: %w", i, err)
		}
		if seen[d.Serial] {
			return fmt.Errorf("disk %d: serial %q used twice: %w", i, d.Serial, errdefs.ErrInvalidArgument)
		}
		seen[d.Serial] = true
		if d.Path == "" {
			return fmt.Errorf("disk %s: no path: %w", d.Serial, errdefs.ErrInvalidArgument)
		}
		p := spec.DiskPath(d)
		rel, err := filepath.Rel(filepath.Clean(spec.Dir), p)
		if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
			return fmt.Errorf("disk %s: %s is outside the instance directory %s (hard-link shared images into it): %w",
				d.Serial, p, spec.Dir, errdefs.ErrInvalidArgument)
		}
		// Lstat: a symlink would lead outside the directory; a shared
		// image is a hard link, which is a regular file.
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("disk %s: %w", d.Serial, errorsJoinInvalid(err))
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("disk %s: %s is not a regular file (a symlink or a device?): %w", d.Serial, p, errdefs.ErrInvalidArgument)
		}
	}
	if n := spec.NIC; n != nil {
		if n.TAP == nil {
			return fmt.Errorf("nic: no TAP file: %w", errdefs.ErrInvalidArgument)
		}
		mac, err := net.ParseMAC(n.MAC)
		if err != nil || len(mac) != 6 || mac[0]&1 != 0 {
			return fmt.Errorf("nic: MAC %q is not a unicast 48-bit address: %w", n.MAC, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// DeviceSignature describes the devices a saved state belongs to: the
// disks' serials and modes in order, and the NIC's MAC. The files and the
// TAP behind them may differ between boot and restore (a fork's own
// copies, its own slot); the devices may not. Drivers store it with a
// saved state and refuse a restore whose spec has another one.
func DeviceSignature(spec Spec) string {
	var b strings.Builder
	for _, d := range spec.Disks {
		fmt.Fprintf(&b, "disk %s ro=%v;", d.Serial, d.ReadOnly)
	}
	if spec.NIC != nil {
		fmt.Fprintf(&b, "nic %s;", strings.ToLower(spec.NIC.MAC))
	}
	return b.String()
}

func errorsJoinInvalid(err error) error {
	return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
}

func checkSerial(s string) error {
	ok := len(s) >= 1 && len(s) <= MaxSerial
	for i := 0; i < len(s) && ok; i++ {
		c := s[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
	}
	if !ok {
		return fmt.Errorf("serial %q: want 1-%d characters of [A-Za-z0-9._-]: %w", s, MaxSerial, errdefs.ErrInvalidArgument)
	}
	return nil
}
