package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/zygote/zygote/errdefs"
)

// realDepends are the depends= of Debian 6.1 cloud modules (modinfo).
var realDepends = map[string][]string{
	"virtio":                            {"virtio_ring"},
	"virtio_pci":                        {"virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio"},
	"virtio_mmio":                       {"virtio", "virtio_ring"},
	"net_failover":                      {"failover"},
	"virtio_net":                        {"virtio_ring", "virtio", "net_failover"},
	"virtio_blk":                        {"virtio", "virtio_ring"},
	"virtio_console":                    {"virtio", "virtio_ring"},
	"virtio-rng":                        {"virtio", "virtio_ring"},
	"vmw_vsock_virtio_transport_common": {"vsock"},
	"vmw_vsock_virtio_transport":        {"virtio", "vmw_vsock_virtio_transport_common", "virtio_ring", "vsock"},
	"erofs":                             {"libcrc32c"},
}

// fakeModuleTree writes lib/modules/<version> under root with a .ko for
// every module in mods (except builtin ones, listed in modules.builtin).
func fakeModuleTree(t *testing.T, root, version string, mods []string, builtin ...string) string {
	t.Helper()
	dir := filepath.Join(root, "lib", "modules", version)
	kdir := filepath.Join(dir, "kernel", "drivers", "virtio")
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		t.Fatal(err)
	}
	var bl strings.Builder
	for _, b := range builtin {
		bl.WriteString("kernel/drivers/virtio/" + b + ".ko\n")
	}
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(bl.String()), 0o644)
	for _, m := range mods {
		if slices.Contains(builtin, m) {
			continue
		}
		os.WriteFile(filepath.Join(kdir, m+".ko"), makeELF(1, modinfo(modName(m), realDepends[m]...)), 0o644)
	}
	return dir
}

func TestModuleOrderSatisfiesDepends(t *testing.T) {
	dir := fakeModuleTree(t, t.TempDir(), "6.1.0-1-cloud-amd64", Modules)
	set, err := selectModules(dir, Modules)
	if err != nil {
		t.Fatalf("selectModules: %v", err)
	}
	var want []string
	for _, m := range Modules {
		want = append(want, modName(m))
	}
	if !slices.Equal(set.order, want) {
		t.Errorf("order = %v, want %v", set.order, want)
	}
}

func TestModuleSelection(t *testing.T) {
	root := t.TempDir()
	// virtio and virtio_ring built in: skipped, and still satisfy depends.
	dir := fakeModuleTree(t, root, "v1", Modules, "virtio_ring", "virtio")
	set, err := selectModules(dir, Modules)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(set.builtin, []string{"virtio_ring", "virtio"}) || slices.Contains(set.order, "virtio") || set.order[0] != "virtio_pci_legacy_dev" {
		t.Errorf("builtin %v order %v", set.builtin, set.order)
	}

	// A wrong order is caught.
	if _, err := selectModules(dir, []string{"net_failover", "failover"}); err == nil || !strings.Contains(err.Error(), "depends on failover") {
		t.Errorf("bad order: %v", err)
	}
	// A module that is neither built in nor shipped.
	if _, err := selectModules(dir, []string{"virtio_gpu"}); err == nil || !strings.Contains(err.Error(), "neither built into") {
		t.Errorf("missing module: %v", err)
	}
	// Compressed modules get a clear error.
	os.WriteFile(filepath.Join(dir, "kernel", "drivers", "virtio", "virtio_gpu.ko.xz"), []byte("x"), 0o644)
	if _, err := selectModules(dir, []string{"virtio_gpu"}); err == nil || !strings.Contains(err.Error(), "compressed") {
		t.Errorf("compressed module: %v", err)
	}
}

func TestCompareVersions(t *testing.T) {
	ordered := []string{"5.10.0-30-cloud-amd64", "6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64", "6.1.0-56-cloud-amd64", "6.12.1-1-cloud-amd64"}
	for i := range ordered {
		for j := range ordered {
			got := compareVersions(ordered[i], ordered[j])
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got != want {
				t.Errorf("compare(%s, %s) = %d, want %d", ordered[i], ordered[j], got, want)
			}
		}
	}
}

func TestParseDepends(t *testing.T) {
	out := "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n  Recommends: foo\n"
	if got := parseDepends(out); got != "linux-image-6.1.0-56-cloud-amd64" {
		t.Errorf("parseDepends = %q", got)
	}
	if got := parseDepends("linux-image-cloud-amd64\n |Depends: <linux-image-6.1.0-9-cloud-amd64>\n"); got != "linux-image-6.1.0-9-cloud-amd64" {
		t.Errorf("parseDepends alternatives = %q", got)
	}
	if got := parseDepends("x\n  Depends: libc6\n"); got != "" {
		t.Errorf("parseDepends without kernel = %q", got)
	}
}

func TestFindKernelEmptyCache(t *testing.T) {
	_, err := FindKernel(t.TempDir())
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "zygote kernel fetch") {
		t.Fatalf("FindKernel = %v", err)
	}
}

// makeKernelDeb builds a .deb shaped like linux-image-<version>: a bzImage
// with an LZ4 payload, a config, the modules.
func makeKernelDeb(t *testing.T, version string, elf []byte) string {
	t.Helper()
	root := t.TempDir()
	pkg := "linux-image-" + version
	os.MkdirAll(filepath.Join(root, "DEBIAN"), 0o755)
	os.WriteFile(filepath.Join(root, "DEBIAN", "control"), []byte("Package: "+pkg+"\nVersion: 6.1.999-1\nArchitecture: amd64\nMaintainer: test <t@example.com>\nDescription: test kernel\n"), 0o644)
	os.MkdirAll(filepath.Join(root, "boot"), 0o755)
	os.WriteFile(filepath.Join(root, "boot", "vmlinuz-"+version), makeBzImage(lz4Legacy(t, elf), uint32(len(elf))), 0o644)
	os.WriteFile(filepath.Join(root, "boot", "config-"+version), []byte("CONFIG_PVH=y\n"), 0o644)
	fakeModuleTree(t, root, version, append(append([]string{}, Modules...), fsModuleNames()...))
	deb := filepath.Join(t.TempDir(), pkg+".deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "-b", root, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -b: %v: %s", err, out)
	}
	return deb
}

func TestFetchKernelFromDeb(t *testing.T) {
	needTool(t, "dpkg-deb", "dpkg")
	needTool(t, "lz4", "lz4")
	elf := fakeKernelELF()
	const version = "6.1.0-999-cloud-amd64"
	deb := makeKernelDeb(t, version, elf)
	cache := t.TempDir()
	ctx := context.Background()

	k, fetched, err := FetchKernel(ctx, FetchOptions{CacheDir: cache, DebFile: deb})
	if err != nil {
		t.Fatalf("FetchKernel: %v", err)
	}
	if !fetched || k.Version != version || k.Package != "linux-image-"+version || k.PackageVersion != "6.1.999-1" || !k.PVH {
		t.Errorf("kernel = %+v, fetched %v", k, fetched)
	}
	if got, _ := os.ReadFile(k.Vmlinux()); !bytes.Equal(got, elf) || k.BootImage() != k.Vmlinux() {
		t.Error("vmlinux in the cache is not the ELF")
	}
	if len(k.Modules) != len(Modules) || k.Modules[11] != "virtio_rng.ko" {
		t.Errorf("modules = %v", k.Modules)
	}
	if !slices.Equal(k.FSModules, []string{"overlay.ko", "libcrc32c.ko", "erofs.ko"}) || k.ModuleSet != moduleSetVersion {
		t.Errorf("fs modules = %v, module set %d", k.FSModules, k.ModuleSet)
	}
	for _, p := range append(k.ModulePaths(), k.FSModulePaths()...) {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
	// Nothing but the entry is left behind.
	ents, _ := os.ReadDir(filepath.Join(cache, "kernel"))
	if len(ents) != 1 || ents[0].Name() != version {
		t.Errorf("cache holds %v", ents)
	}

	// A second fetch is a no-op.
	k2, fetched, err := FetchKernel(ctx, FetchOptions{CacheDir: cache, DebFile: deb})
	if err != nil || fetched || k2.Dir != k.Dir {
		t.Errorf("second fetch: fetched %v dir %s err %v", fetched, k2.Dir, err)
	}
	k3, fetched, err := FetchKernel(ctx, FetchOptions{CacheDir: cache, Package: "linux-image-" + version})
	if err != nil || fetched || k3.Version != version {
		t.Errorf("fetch of a cached package: fetched %v err %v", fetched, err)
	}

	found, err := FindKernel(cache)
	if err != nil || found.Version != version {
		t.Errorf("FindKernel = %+v, %v", found, err)
	}
	// An incomplete entry (no manifest) is ignored.
	os.MkdirAll(filepath.Join(cache, "kernel", "9.9.9-1-cloud-amd64"), 0o755)
	if found, err := FindKernel(cache); err != nil || found.Version != version {
		t.Errorf("FindKernel with an incomplete newer entry = %+v, %v", found, err)
	}
}

// TestFetchKernelCompletesOldEntry: an entry cached before the filesystem
// modules existed is completed in place: new module files first, then the
// manifest, so a reader never sees a manifest listing a missing file.
func TestFetchKernelCompletesOldEntry(t *testing.T) {
	needTool(t, "dpkg-deb", "dpkg")
	needTool(t, "lz4", "lz4")
	const version = "6.1.0-998-cloud-amd64"
	deb := makeKernelDeb(t, version, fakeKernelELF())
	cache := t.TempDir()
	ctx := context.Background()
	k, _, err := FetchKernel(ctx, FetchOptions{CacheDir: cache, DebFile: deb})
	if err != nil {
		t.Fatal(err)
	}
	// Make it look like an entry of module set 1.
	for _, p := range k.FSModulePaths() {
		os.Remove(p)
	}
	old := k
	old.FSModules, old.ModuleSet = nil, 0
	b, _ := json.Marshal(old)
	os.WriteFile(filepath.Join(k.Dir, kernelManifest), b, 0o644)
	if got, err := LoadKernel(k.Dir); err != nil || len(got.FSModules) != 0 {
		t.Fatalf("old entry: %+v %v", got, err)
	}

	k2, fetched, err := FetchKernel(ctx, FetchOptions{CacheDir: cache, DebFile: deb})
	if err != nil || !fetched || k2.Dir != k.Dir || k2.ModuleSet != moduleSetVersion || len(k2.FSModules) != 3 {
		t.Fatalf("completing fetch: %+v fetched %v err %v", k2, fetched, err)
	}
	for _, p := range k2.FSModulePaths() {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
	ents, _ := os.ReadDir(k.Dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), "zygote-tmp") {
			t.Errorf("leftover %s", e.Name())
		}
	}
}
