package guest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/zygote/zygote/errdefs"
)

// MetaPackage is the Debian package that depends on the current cloud
// kernel image.
const MetaPackage = "linux-image-cloud-amd64"

// FetchOptions tune FetchKernel.
type FetchOptions struct {
	// CacheDir defaults to CacheDir().
	CacheDir string
	// Package pins the kernel image package (linux-image-<ver>-cloud-amd64);
	// empty resolves MetaPackage's current dependency with apt-cache.
	Package string
	// DebFile uses a local .deb instead of apt-get download.
	DebFile string
	Logger  *slog.Logger
}

// FetchKernel makes sure the cloud kernel is in the cache and returns it.
// It downloads the package with apt-get download, unpacks it with dpkg-deb
// -x into a temporary directory (it never installs it as the host kernel),
// extracts the ELF vmlinux, and copies the bzImage, the config and the
// modules of Modules. The entry appears atomically (rename of a complete
// directory). If the resolved version is already cached, nothing is
// downloaded and fetched is false.
func FetchKernel(ctx context.Context, opts FetchOptions) (k Kernel, fetched bool, err error) {
	if opts.CacheDir == "" {
		opts.CacheDir = CacheDir()
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if _, err := requireTool("dpkg-deb", "dpkg"); err != nil {
		return Kernel{}, false, err
	}
	root := kernelRoot(opts.CacheDir)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return Kernel{}, false, fmt.Errorf("kernel cache: %w", err)
	}

	pkg := opts.Package
	if opts.DebFile == "" && pkg == "" {
		if pkg, err = resolveKernelPackage(ctx); err != nil {
			return Kernel{}, false, err
		}
	}
	// An entry made for an older module set is completed below.
	if pkg != "" {
		if k, err := LoadKernel(filepath.Join(root, strings.TrimPrefix(pkg, "linux-image-"))); err == nil {
			if k.ModuleSet >= moduleSetVersion {
				log.Info("kernel already cached", "version", k.Version, "dir", k.Dir)
				return k, false, nil
			}
		}
	}

	tmp, err := os.MkdirTemp(root, ".fetch-")
	if err != nil {
		return Kernel{}, false, fmt.Errorf("kernel cache: %w", err)
	}
	defer os.RemoveAll(tmp)

	deb := opts.DebFile
	if deb == "" {
		log.Info("downloading kernel package", "package", pkg)
		if deb, err = downloadDeb(ctx, tmp, pkg); err != nil {
			return Kernel{}, false, err
		}
	}
	k, err = unpackKernel(ctx, deb, tmp, log)
	if err != nil {
		return Kernel{}, false, err
	}
	final := filepath.Join(root, k.Version)
	if old, err := LoadKernel(final); err == nil && old.ModuleSet < moduleSetVersion {
		if err := completeEntry(k, final); err != nil {
			return Kernel{}, false, err
		}
		k, err = LoadKernel(final)
		if err != nil {
			return Kernel{}, false, err
		}
		log.Info("kernel cache entry completed with new modules", "version", k.Version, "dir", final, "fs_modules", k.FSModules)
		return k, true, nil
	}
	if err := os.Rename(k.Dir, final); err != nil {
		// Someone else (a concurrent fetch) got there first.
		if existing, lerr := LoadKernel(final); lerr == nil {
			return existing, false, nil
		}
		return Kernel{}, false, fmt.Errorf("install kernel %s in cache (if %s is a broken leftover, remove it and fetch again): %w", k.Version, final, err)
	}
	k.Dir = final
	log.Info("kernel cached", "version", k.Version, "dir", final, "pvh", k.PVH, "modules", len(k.Modules), "builtin", len(k.Builtin))
	return k, true, nil
}

// resolveKernelPackage asks apt which kernel image MetaPackage depends on.
func resolveKernelPackage(ctx context.Context) (string, error) {
	if _, err := requireTool("apt-cache", "apt"); err != nil {
		return "", err
	}
	out, err := runTool(ctx, "", "apt-cache", "depends", MetaPackage)
	if err != nil {
		return "", fmt.Errorf("resolve %s (if apt knows no such package, run apt-get update): %w", MetaPackage, err)
	}
	if pkg := parseDepends(string(out)); pkg != "" {
		return pkg, nil
	}
	return "", fmt.Errorf("resolve %s: apt-cache depends names no linux-image package (run apt-get update?): %w", MetaPackage, errdefs.ErrNotFound)
}

// parseDepends returns the first linux-image-* dependency in apt-cache
// depends output.
func parseDepends(out string) string {
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimLeft(strings.TrimSpace(line), "|")
		if dep, ok := strings.CutPrefix(line, "Depends: "); ok {
			dep = strings.Trim(strings.TrimSpace(dep), "<>")
			if strings.HasPrefix(dep, "linux-image-") && dep != MetaPackage {
				return dep
			}
		}
	}
	return ""
}

func downloadDeb(ctx context.Context, dir, pkg string) (string, error) {
	if _, err := requireTool("apt-get", "apt"); err != nil {
		return "", err
	}
	args := []string{"download", pkg}
	if os.Geteuid() == 0 {
		// apt drops to _apt for downloads, which cannot write into our
		// private temporary directory; it would warn and run as root anyway.
		args = append([]string{"-o", "APT::Sandbox::User=root"}, args...)
	}
	if _, err := runTool(ctx, dir, "apt-get", args...); err != nil {
		return "", fmt.Errorf("download %s: %w", pkg, err)
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("download %s: expected one .deb, found %d", pkg, len(debs))
	}
	return debs[0], nil
}

// unpackKernel unpacks deb under tmp and builds a complete cache entry in
// tmp/stage (returned as k.Dir).
func unpackKernel(ctx context.Context, deb, tmp string, log *slog.Logger) (Kernel, error) {
	fields, err := runTool(ctx, "", "dpkg-deb", "--field", deb, "Package", "Version")
	if err != nil {
		return Kernel{}, fmt.Errorf("read %s: %w", deb, err)
	}
	var k Kernel
	for _, line := range strings.Split(string(fields), "\n") {
		if v, ok := strings.CutPrefix(line, "Package: "); ok {
			k.Package = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "Version: "); ok {
			k.PackageVersion = strings.TrimSpace(v)
		}
	}
	unpacked := filepath.Join(tmp, "root")
	if _, err := runTool(ctx, "", "dpkg-deb", "-x", deb, unpacked); err != nil {
		return Kernel{}, fmt.Errorf("unpack %s: %w", deb, err)
	}
	images, _ := filepath.Glob(filepath.Join(unpacked, "boot", "vmlinuz-*"))
	if len(images) != 1 {
		return Kernel{}, fmt.Errorf("%s: expected one boot/vmlinuz-*, found %d", deb, len(images))
	}
	k.Version = strings.TrimPrefix(filepath.Base(images[0]), "vmlinuz-")
	modDir := filepath.Join(unpacked, "lib", "modules", k.Version)
	if _, err := os.Stat(modDir); err != nil {
		return Kernel{}, fmt.Errorf("%s: no modules for %s: %w", deb, k.Version, err)
	}

	stage := filepath.Join(tmp, "stage")
	if err := os.MkdirAll(filepath.Join(stage, "modules"), 0o755); err != nil {
		return Kernel{}, err
	}
	if err := copyFile(images[0], filepath.Join(stage, "vmlinuz")); err != nil {
		return Kernel{}, err
	}
	if cfg := filepath.Join(unpacked, "boot", "config-"+k.Version); fileExists(cfg) {
		if err := copyFile(cfg, filepath.Join(stage, "config")); err != nil {
			return Kernel{}, err
		}
	}
	switch err := ExtractVmlinux(ctx, images[0], filepath.Join(stage, "vmlinux")); {
	case errors.Is(err, errNotLZ4):
		// Not fatal: the bzImage boots, only slower.
		k.VmlinuxNote = err.Error()
		os.Remove(filepath.Join(stage, "vmlinux"))
		log.Warn("no ELF vmlinux; guests will boot the bzImage", "reason", err)
	case err != nil:
		return Kernel{}, err
	default:
		if k.PVH, err = HasPVHNote(filepath.Join(stage, "vmlinux")); err != nil {
			return Kernel{}, fmt.Errorf("read vmlinux: %w", err)
		}
	}

	mods, err := selectModules(modDir, append(append([]string{}, Modules...), fsModuleNames()...))
	if err != nil {
		return Kernel{}, fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	onDemand := map[string]bool{}
	for _, m := range fsModuleNames() {
		onDemand[modName(m)] = true
	}
	for _, name := range mods.order {
		file := name + ".ko"
		if err := copyFile(mods.files[name], filepath.Join(stage, "modules", file)); err != nil {
			return Kernel{}, err
		}
		if onDemand[name] {
			k.FSModules = append(k.FSModules, file)
		} else {
			k.Modules = append(k.Modules, file)
		}
	}
	k.Builtin = mods.builtin
	k.ModuleSet = moduleSetVersion
	k.FetchedAt = time.Now().UTC()
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return Kernel{}, err
	}
	// The manifest is written last: an entry without one is incomplete.
	if err := writeFileSync(filepath.Join(stage, kernelManifest), b); err != nil {
		return Kernel{}, err
	}
	k.Dir = stage
	return k, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// completeEntry adds to the cache entry dir the module files of the fresh
// entry k it lacks, then replaces its manifest: readers of the old
// manifest find every file it lists throughout, and a reader of the new
// one finds the new files (they are renamed in before the manifest).
func completeEntry(k Kernel, dir string) error {
	for _, m := range append(append([]string{}, k.Modules...), k.FSModules...) {
		dst := filepath.Join(dir, "modules", m)
		if _, err := os.Stat(dst); err == nil {
			continue
		}
		tmp := dst + ".zygote-tmp"
		if err := copyFile(filepath.Join(k.Dir, "modules", m), tmp); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("complete kernel cache entry %s: %w", dir, err)
		}
		if err := os.Rename(tmp, dst); err != nil {
			return fmt.Errorf("complete kernel cache entry %s: %w", dir, err)
		}
	}
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+kernelManifest+".zygote-tmp")
	if err := writeFileSync(tmp, b); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, kernelManifest))
}
