package guest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/zygote/zygote/errdefs"
)

// InstalledInitBinary is where an installed zygote-init lives when it is
// not next to the zygote binary.
const InstalledInitBinary = "/usr/local/lib/zygote/zygote-init"

// Assets is what a VMM needs to boot a zygote guest.
type Assets struct {
	// KernelVersion is the guest kernel release.
	KernelVersion string
	// Kernel is the image for QEMU's -kernel: the ELF vmlinux (PVH entry),
	// or the bzImage if the kernel has no usable ELF.
	Kernel string
	// KernelBzImage is the bzImage, for VMMs that need one.
	KernelBzImage string
	// Initramfs is the uncompressed cpio for -initrd.
	Initramfs string
}

// AssetOptions locate the inputs of Assets.
type AssetOptions struct {
	// CacheDir defaults to CacheDir().
	CacheDir string
	// InitBinary: see FindInitBinary.
	InitBinary string
	// Busybox defaults to DefaultBusybox.
	Busybox string
}

// ResolveAssets finds the newest cached kernel and zygote-init, and builds
// (or reuses) the matching initramfs. The daemon calls it once at start.
func ResolveAssets(ctx context.Context, opts AssetOptions) (Assets, error) {
	if opts.CacheDir == "" {
		opts.CacheDir = CacheDir()
	}
	k, err := FindKernel(opts.CacheDir)
	if err != nil {
		return Assets{}, err
	}
	init, err := FindInitBinary(opts.InitBinary)
	if err != nil {
		return Assets{}, err
	}
	initrd, err := BuildInitramfs(ctx, BuildOptions{InitBinary: init, Busybox: opts.Busybox, Kernel: k, CacheDir: opts.CacheDir})
	if err != nil {
		return Assets{}, err
	}
	return Assets{KernelVersion: k.Version, Kernel: k.BootImage(), KernelBzImage: k.Vmlinuz(), Initramfs: initrd}, nil
}

// FindInitBinary returns the zygote-init to put in the initramfs: explicit
// if set, else zygote-init next to the running executable, else
// InstalledInitBinary. The binary must be static.
func FindInitBinary(explicit string) (string, error) {
	var candidates []string
	if explicit != "" {
		candidates = []string{explicit}
	} else {
		if exe, err := os.Executable(); err == nil {
			candidates = append(candidates, filepath.Join(filepath.Dir(exe), "zygote-init"))
		}
		candidates = append(candidates, InstalledInitBinary)
	}
	for _, c := range candidates {
		err := checkStaticELF(c)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("zygote-init at %s: %w (rebuild it with CGO_ENABLED=0 go build -o %s ./cmd/zygote-init)", c, err, c)
		}
	}
	return "", fmt.Errorf("zygote-init not found (looked at %s): build it next to zygote with `CGO_ENABLED=0 go build -o bin/zygote-init ./cmd/zygote-init`, or name it explicitly: %w",
		strings.Join(candidates, ", "), errdefs.ErrNotFound)
}
