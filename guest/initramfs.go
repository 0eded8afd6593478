package guest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/zygote/zygote/guest/agentproto"
)

// DefaultBusybox is where Debian's busybox-static installs its binary.
const DefaultBusybox = "/bin/busybox"

// initramfsFormat is part of the cache key: bump it whenever the layout
// below changes, so that old cached images are not reused.
const initramfsFormat = "zygote-initramfs 1"

// BuildOptions are the inputs of an initramfs.
type BuildOptions struct {
	// InitBinary is the static zygote-init; it becomes /init.
	InitBinary string
	// Busybox is a static busybox (default DefaultBusybox, Debian package
	// busybox-static); it becomes /bin/busybox with its applet symlinks.
	Busybox string
	// Kernel supplies the modules, in load order. A zero Kernel gives an
	// initramfs without modules.
	Kernel Kernel
	// CacheDir defaults to CacheDir().
	CacheDir string
}

// BuildInitramfs returns the path of an uncompressed newc initramfs:
//
//	/init                          zygote-init
//	/bin/busybox + applet symlinks (from busybox --list-full)
//	/lib/modules/zygote/*.ko       the kernel's modules
//	/lib/modules/zygote/modules.order   their load order (boot modules)
//	/lib/modules/zygote/filesystems  per filesystem, its modules (loaded on demand)
//	/dev/console                   so the kernel can give init a console
//	/etc/{passwd,group}, /proc /sys /dev /tmp /run /root ... directories
//
// The archive is deterministic (sorted, mtime 0, uid 0) and cached under
// <cache>/initramfs/<sha256 of the inputs>.cpio, written atomically: the
// same inputs return the cached file without rebuilding.
func BuildInitramfs(ctx context.Context, opts BuildOptions) (string, error) {
	if opts.Busybox == "" {
		opts.Busybox = DefaultBusybox
	}
	if opts.CacheDir == "" {
		opts.CacheDir = CacheDir()
	}
	if opts.InitBinary == "" {
		return "", fmt.Errorf("build initramfs: no zygote-init binary given")
	}
	if err := checkStaticELF(opts.InitBinary); err != nil {
		return "", fmt.Errorf("zygote-init: %w (build it with CGO_ENABLED=0 go build -o bin/zygote-init ./cmd/zygote-init)", err)
	}
	if err := checkStaticELF(opts.Busybox); err != nil {
		return "", fmt.Errorf("busybox: %w (install the Debian package busybox-static)", err)
	}

	entries, err := initramfsEntries(ctx, opts)
	if err != nil {
		return "", err
	}
	key, err := entriesKey(entries, opts.Kernel.Version)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(opts.CacheDir, "initramfs")
	path := filepath.Join(dir, key+".cpio")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("initramfs cache: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".build-*.cpio")
	if err != nil {
		return "", fmt.Errorf("initramfs cache: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename this fails harmlessly
	if err := writeEntries(tmp, entries); err != nil {
		tmp.Close()
		return "", fmt.Errorf("write initramfs: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("install initramfs: %w", err)
	}
	return path, nil
}

// entry is one initramfs member; exactly one of the kinds applies.
type entry struct {
	name         string
	perm         fs.FileMode
	dir          bool
	src          string // regular file copied from the host
	data         []byte // regular file with these contents
	link         string // symlink target
	chr          bool
	major, minor uint32
}

func initramfsEntries(ctx context.Context, opts BuildOptions) ([]entry, error) {
	m := map[string]entry{}
	add := func(e entry) {
		m[e.name] = e
		for d := filepath.Dir(e.name); d != "."; d = filepath.Dir(d) {
			if _, ok := m[d]; !ok {
				m[d] = entry{name: d, perm: 0o755, dir: true}
			}
		}
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "etc", "mnt", "var", "usr/bin", "usr/sbin", "sbin"} {
		add(entry{name: d, perm: 0o755, dir: true})
	}
	add(entry{name: "tmp", perm: 0o777 | fs.ModeSticky, dir: true})
	add(entry{name: "root", perm: 0o700, dir: true})
	add(entry{name: "dev/console", perm: 0o600, chr: true, major: 5, minor: 1})
	add(entry{name: "etc/passwd", perm: 0o644, data: []byte("root:x:0:0:root:/root:/bin/sh\n")})
	add(entry{name: "etc/group", perm: 0o644, data: []byte("root:x:0:\ntty:x:5:\n")})

	applets, err := busyboxApplets(ctx, opts.Busybox)
	if err != nil {
		return nil, err
	}
	busybox := strings.TrimPrefix(agentproto.InitramfsBusybox, "/")
	for _, a := range applets {
		if a == busybox || a == "linuxrc" || a == "sbin/init" || a == "init" {
			continue // /init is zygote-init
		}
		add(entry{name: a, link: agentproto.InitramfsBusybox})
	}
	add(entry{name: busybox, perm: 0o755, src: opts.Busybox})
	add(entry{name: "init", perm: 0o755, src: opts.InitBinary})

	modDir := strings.TrimPrefix(agentproto.InitramfsModulesDir, "/")
	add(entry{name: modDir, perm: 0o755, dir: true})
	var order bytes.Buffer
	for i, p := range opts.Kernel.ModulePaths() {
		name := opts.Kernel.Modules[i]
		add(entry{name: modDir + "/" + name, perm: 0o644, src: p})
		fmt.Fprintln(&order, name)
	}
	add(entry{name: strings.TrimPrefix(agentproto.InitramfsModuleOrder, "/"), perm: 0o644, data: order.Bytes()})
	// Filesystem modules: present, not in modules.order; zygote-init loads
	// them when a Configure mounts that filesystem.
	for i, p := range opts.Kernel.FSModulePaths() {
		add(entry{name: modDir + "/" + opts.Kernel.FSModules[i], perm: 0o644, src: p})
	}
	add(entry{name: strings.TrimPrefix(agentproto.InitramfsFSModules, "/"), perm: 0o644, data: fsModuleList(opts.Kernel)})

	out := make([]entry, 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	// A parent's name is a prefix of its children's, so it sorts first.
	slices.SortFunc(out, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

// fsModuleList is the content of agentproto.InitramfsFSModules: one line
// per filesystem, "fstype module.ko...", naming the modules of k (built-in
// ones are absent, so a filesystem may have none).
func fsModuleList(k Kernel) []byte {
	var b bytes.Buffer
	for _, f := range FilesystemModules {
		b.WriteString(f.FSType)
		for _, m := range f.Modules {
			if file := modName(m) + ".ko"; slices.Contains(k.FSModules, file) {
				b.WriteString(" " + file)
			}
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// busyboxApplets lists the applets' install paths (bin/sh, usr/bin/awk...),
// asking the busybox binary itself; older ones only know --list (all go in
// bin/).
func busyboxApplets(ctx context.Context, busybox string) ([]string, error) {
	out, err := runTool(ctx, "", busybox, "--list-full")
	if err != nil {
		if out, err = runTool(ctx, "", busybox, "--list"); err != nil {
			return nil, fmt.Errorf("list busybox applets: %w", err)
		}
		var apps []string
		for _, a := range strings.Fields(string(out)) {
			apps = append(apps, "bin/"+a)
		}
		return apps, nil
	}
	var apps []string
	for _, a := range strings.Fields(string(out)) {
		a = strings.TrimPrefix(a, "/")
		if a != "" && !strings.Contains(a, "..") {
			apps = append(apps, a)
		}
	}
	if len(apps) == 0 {
		return nil, fmt.Errorf("busybox %s lists no applets", busybox)
	}
	return apps, nil
}

// entriesKey hashes everything that ends up in the archive.
func entriesKey(entries []entry, kernelVersion string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\nkernel %s\n", initramfsFormat, kernelVersion)
	for _, e := range entries {
		fmt.Fprintf(h, "%s %o %v %q %v %d:%d %d\n", e.name, e.perm, e.dir, e.link, e.chr, e.major, e.minor, len(e.data))
		h.Write(e.data)
		if e.src != "" {
			f, err := os.Open(e.src)
			if err != nil {
				return "", err
			}
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return "", fmt.Errorf("hash %s: %w", e.src, err)
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:32], nil
}

func writeEntries(w io.Writer, entries []entry) error {
	cw := NewCpioWriter(w)
	for _, e := range entries {
		var err error
		switch {
		case e.dir:
			err = cw.Dir(e.name, e.perm)
		case e.link != "":
			err = cw.Symlink(e.name, e.link)
		case e.chr:
			err = cw.CharDevice(e.name, e.perm, e.major, e.minor)
		case e.src != "":
			err = copyInto(cw, e)
		default:
			err = cw.File(e.name, e.perm, int64(len(e.data)), bytes.NewReader(e.data))
		}
		if err != nil {
			return err
		}
	}
	return cw.Close()
}

func copyInto(cw *CpioWriter, e entry) error {
	f, err := os.Open(e.src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	return cw.File(e.name, e.perm, st.Size(), f)
}
