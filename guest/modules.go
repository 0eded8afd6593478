package guest

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Modules are the kernel modules the guest needs, in load order (measured
// working with Debian's 6.1 cloud kernel): virtio transport (PCI and
// MMIO), net, block, console (the agent's virtio-serial port), rng, and
// vsock for Firecracker. A module built into the kernel is skipped. The
// order is checked against each module's depends= at fetch time.
var Modules = []string{
	"virtio_ring",
	"virtio",
	"virtio_pci_legacy_dev",
	"virtio_pci_modern_dev",
	"virtio_pci",
	"virtio_mmio",
	"failover",
	"net_failover",
	"virtio_net",
	"virtio_blk",
	"virtio_console",
	"virtio-rng",
	"vsock",
	"vmw_vsock_virtio_transport_common",
	"vmw_vsock_virtio_transport",
}

// FSModules names the modules a filesystem needs, in load order.
type FSModules struct {
	FSType  string
	Modules []string
}

// FilesystemModules are modules zygote-init loads on demand, when the
// workload's root or a volume needs the filesystem (Configure), so a guest
// without disks boots no slower: overlay for the workload root, erofs (and
// libcrc32c, its dependency) for erofs root disks. ext4 (with jbd2,
// mbcache, crc16) is built into the 6.1 cloud kernel. The initramfs
// carries them in agentproto.InitramfsModulesDir, outside modules.order,
// and lists them per filesystem in agentproto.InitramfsFSModules.
var FilesystemModules = []FSModules{
	{"overlay", []string{"overlay"}},
	{"erofs", []string{"libcrc32c", "erofs"}},
}

// fsModuleNames is FilesystemModules flattened, first occurrence first.
func fsModuleNames() []string {
	var out []string
	for _, f := range FilesystemModules {
		for _, m := range f.Modules {
			if !slices.Contains(out, m) {
				out = append(out, m)
			}
		}
	}
	return out
}

// moduleSetVersion names the content of Modules + FilesystemModules: a
// cache entry made for an older set is completed in place by FetchKernel.
const moduleSetVersion = 2

// modName normalises a module name: the kernel treats - and _ alike.
func modName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// moduleDepends returns the depends= list from a module's .modinfo.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", path, err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section", path)
	}
	b, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo of %s: %w", path, err)
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, modName(d))
				}
			}
			return deps, nil
		}
	}
	return nil, nil
}

// readBuiltin returns the normalised names in a modules.builtin file.
func readBuiltin(path string) (map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		base := filepath.Base(strings.TrimSpace(sc.Text()))
		if name, ok := strings.CutSuffix(base, ".ko"); ok {
			out[modName(name)] = true
		}
	}
	return out, sc.Err()
}

// moduleSet is the outcome of selecting Modules from a kernel tree.
type moduleSet struct {
	// files maps normalised module name to its .ko path, for the modules
	// to load, in load order by order.
	order   []string
	files   map[string]string
	builtin []string
}

// selectModules finds each wanted module in the tree under modDir
// (lib/modules/<version>): as a .ko file, or built in (modules.builtin).
// It fails if one is neither, or if the order loads a module before one
// it depends on.
func selectModules(modDir string, want []string) (moduleSet, error) {
	builtin, err := readBuiltin(filepath.Join(modDir, "modules.builtin"))
	if err != nil {
		return moduleSet{}, fmt.Errorf("kernel module list: %w", err)
	}
	found := map[string]string{}
	compressed := map[string]string{}
	err = filepath.WalkDir(filepath.Join(modDir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		base := d.Name()
		if name, ok := strings.CutSuffix(base, ".ko"); ok {
			found[modName(name)] = p
		}
		for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz"} {
			if name, ok := strings.CutSuffix(base, ext); ok {
				compressed[modName(name)] = p
			}
		}
		return nil
	})
	if err != nil {
		return moduleSet{}, fmt.Errorf("scan kernel modules: %w", err)
	}
	set := moduleSet{files: map[string]string{}}
	loaded := map[string]bool{}
	for _, w := range want {
		name := modName(w)
		if builtin[name] {
			set.builtin = append(set.builtin, name)
			loaded[name] = true
			continue
		}
		p, ok := found[name]
		if !ok {
			if c, ok := compressed[name]; ok {
				return moduleSet{}, fmt.Errorf("module %s is compressed (%s); zygote needs uncompressed .ko files (Debian 12 kernels)", w, filepath.Base(c))
			}
			return moduleSet{}, fmt.Errorf("module %s is neither built into this kernel nor shipped as a .ko", w)
		}
		deps, err := moduleDepends(p)
		if err != nil {
			return moduleSet{}, err
		}
		for _, d := range deps {
			if !loaded[d] && !builtin[d] {
				return moduleSet{}, fmt.Errorf("module %s depends on %s, which is not loaded before it (fix guest.Modules)", w, d)
			}
		}
		loaded[name] = true
		set.order = append(set.order, name)
		set.files[name] = p
	}
	return set, nil
}
