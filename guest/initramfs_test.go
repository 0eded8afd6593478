package guest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func staticBusybox(t *testing.T) string {
	t.Helper()
	if err := checkStaticELF(DefaultBusybox); err != nil {
		t.Skipf("need a static %s (Debian package busybox-static): %v", DefaultBusybox, err)
	}
	return DefaultBusybox
}

// fakeInit is a static x86-64 ELF standing in for zygote-init.
func fakeInit(t *testing.T, tag string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "zygote-init")
	os.WriteFile(p, makeELF(2, testSection{name: ".text", typ: 1, data: []byte("init " + tag)}), 0o755)
	return p
}

// fakeKernel is a cache entry with two modules.
func fakeKernel(t *testing.T) Kernel {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "modules"), 0o755)
	k := Kernel{Version: "6.1.0-1-cloud-amd64", Dir: dir, Modules: []string{"virtio_ring.ko", "virtio.ko"}, FSModules: []string{"overlay.ko"}}
	for _, m := range append(k.Modules, k.FSModules...) {
		os.WriteFile(filepath.Join(dir, "modules", m), []byte("module "+m), 0o644)
	}
	return k
}

type cpioEntry struct {
	h    CpioHeader
	data []byte
}

func readCpio(t *testing.T, path string) []cpioEntry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := NewCpioReader(f)
	var out []cpioEntry
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(r)
		out = append(out, cpioEntry{*h, data})
	}
}

func TestBuildInitramfs(t *testing.T) {
	bb := staticBusybox(t)
	cache := t.TempDir()
	init := fakeInit(t, "a")
	k := fakeKernel(t)
	ctx := context.Background()
	path, err := BuildInitramfs(ctx, BuildOptions{InitBinary: init, Busybox: bb, Kernel: k, CacheDir: cache})
	if err != nil {
		t.Fatalf("BuildInitramfs: %v", err)
	}
	entries := readCpio(t, path)
	byName := map[string]cpioEntry{}
	seen := map[string]bool{}
	for i, e := range entries {
		byName[e.h.Name] = e
		if i > 0 && entries[i-1].h.Name >= e.h.Name {
			t.Errorf("not sorted: %s after %s", e.h.Name, entries[i-1].h.Name)
		}
		if d := filepath.Dir(e.h.Name); d != "." && !seen[d] {
			t.Errorf("%s comes before its directory %s", e.h.Name, d)
		}
		seen[e.h.Name] = true
		if e.h.Mtime != 0 || e.h.UID != 0 {
			t.Errorf("%s: mtime %d uid %d", e.h.Name, e.h.Mtime, e.h.UID)
		}
	}
	initBytes, _ := os.ReadFile(init)
	if e := byName["init"]; !bytes.Equal(e.data, initBytes) || e.h.Mode != 0o100755 {
		t.Errorf("init: mode %o, %d bytes", e.h.Mode, len(e.data))
	}
	if e := byName["bin/sh"]; !e.h.IsSymlink || e.h.LinkTarget != "/bin/busybox" {
		t.Errorf("bin/sh = %+v", e.h)
	}
	if e := byName["dev/console"]; !e.h.IsCharDevice || e.h.RdevMajor != 5 || e.h.RdevMinor != 1 {
		t.Errorf("dev/console = %+v", e.h)
	}
	if e := byName["lib/modules/zygote/modules.order"]; string(e.data) != "virtio_ring.ko\nvirtio.ko\n" {
		t.Errorf("modules.order = %q", e.data)
	}
	if e := byName["lib/modules/zygote/virtio.ko"]; string(e.data) != "module virtio.ko" {
		t.Errorf("virtio.ko = %q", e.data)
	}
	if e := byName["lib/modules/zygote/overlay.ko"]; string(e.data) != "module overlay.ko" {
		t.Errorf("overlay.ko (on demand, not in modules.order) = %q", e.data)
	}
	if e := byName["lib/modules/zygote/filesystems"]; string(e.data) != "overlay overlay.ko\nerofs\n" {
		t.Errorf("filesystems = %q", e.data)
	}
	if e := byName["tmp"]; e.h.Mode != 0o041777 {
		t.Errorf("tmp mode %o", e.h.Mode)
	}
	for _, name := range []string{"proc", "sys", "dev", "run", "etc/passwd", "bin/busybox"} {
		if _, ok := byName[name]; !ok {
			t.Errorf("missing %s", name)
		}
	}
	for _, name := range []string{"linuxrc", "sbin/init"} {
		if _, ok := byName[name]; ok {
			t.Errorf("%s must not be in the initramfs (/init is zygote-init)", name)
		}
	}

	// Same inputs: the cached file, untouched.
	st1, _ := os.Stat(path)
	again, err := BuildInitramfs(ctx, BuildOptions{InitBinary: init, Busybox: bb, Kernel: k, CacheDir: cache})
	st2, _ := os.Stat(again)
	if err != nil || again != path || !st1.ModTime().Equal(st2.ModTime()) {
		t.Errorf("second build: %s %v (first %s)", again, err, path)
	}
	// Another init: another image.
	other, err := BuildInitramfs(ctx, BuildOptions{InitBinary: fakeInit(t, "b"), Busybox: bb, Kernel: k, CacheDir: cache})
	if err != nil || other == path {
		t.Errorf("changed init gave %s, %v", other, err)
	}
	// Nothing half-written left behind.
	ents, _ := os.ReadDir(filepath.Join(cache, "initramfs"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("leftover %s", e.Name())
		}
	}
}

func TestBuildInitramfsRejectsDynamicInit(t *testing.T) {
	bb := staticBusybox(t)
	dyn := "/bin/ls" // dynamically linked on Debian
	if checkStaticELF(dyn) == nil {
		t.Skip("/bin/ls is static here")
	}
	_, err := BuildInitramfs(context.Background(), BuildOptions{InitBinary: dyn, Busybox: bb, CacheDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("BuildInitramfs with a dynamic init = %v", err)
	}
}

func TestFindInitBinary(t *testing.T) {
	init := fakeInit(t, "x")
	if got, err := FindInitBinary(init); err != nil || got != init {
		t.Errorf("explicit: %s, %v", got, err)
	}
	if _, err := FindInitBinary(filepath.Join(t.TempDir(), "nope")); err == nil || !strings.Contains(err.Error(), "go build") {
		t.Errorf("missing explicit: %v", err)
	}
	if checkStaticELF("/bin/ls") != nil {
		if _, err := FindInitBinary("/bin/ls"); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
			t.Errorf("dynamic explicit: %v", err)
		}
	}
}
