package qemu_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest"
	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/guest/agentproto"
	"github.com/zygote/zygote/guest/guesttest"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/hypervisor/qemu"
	"github.com/zygote/zygote/internal/testutil"
)

// probeSource is the tiny static program the test image runs as its
// entrypoint: it prints what it was started with and exits with $EXIT.
const probeSource = `package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
)

func main() {
	cwd, _ := os.Getwd()
	groups, _ := os.Getgroups()
	b, _ := json.Marshal(map[string]any{"args": os.Args, "env": os.Environ(), "cwd": cwd,
		"uid": os.Getuid(), "gid": os.Getgid(), "groups": groups})
	fmt.Printf("PROBE %s\n", b)
	code, _ := strconv.Atoi(os.Getenv("EXIT"))
	os.Exit(code)
}
`

type probeOutput struct {
	Args   []string `json:"args"`
	Env    []string `json:"env"`
	Cwd    string   `json:"cwd"`
	UID    int      `json:"uid"`
	GID    int      `json:"gid"`
	Groups []int    `json:"groups"`
}

func buildProbe(t *testing.T, dst string) {
	t.Helper()
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "go.mod"), []byte("module probe\n\ngo 1.21\n"), 0o644)
	os.WriteFile(filepath.Join(src, "main.go"), []byte(probeSource), 0o644)
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(gobin, "build", "-trimpath", "-ldflags=-s -w", "-o", dst, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build probe: %v\n%s", err, out)
	}
}

// buildImageDisk makes what package images makes: a read-only root disk
// (ext4 from a directory with mkfs.ext4 -d, or erofs with mkfs.erofs)
// holding busybox-static with applet links, the probe, /etc/passwd and
// /etc/group with a user "app", a marker file and a web root.
func buildImageDisk(t *testing.T, out string, fstype ...string) {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"bin", "usr/bin", "etc", "www", "tmp", "proc", "sys", "dev", "home/app"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(root, "tmp"), 0o1777)
	bb, err := os.ReadFile(guest.DefaultBusybox)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755)
	list, err := exec.Command(guest.DefaultBusybox, "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range strings.Fields(string(list)) {
		if a != "busybox" {
			// Absolute links: they must resolve inside the image.
			os.Symlink("/bin/busybox", filepath.Join(root, "bin", a))
		}
	}
	buildProbe(t, filepath.Join(root, "usr/bin/probe"))
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\napp:x:1000:\nstaff:x:50:app\n"), 0o644)
	os.Symlink("../run/resolv.conf", filepath.Join(root, "etc/resolv.conf"))
	os.WriteFile(filepath.Join(root, "image-marker"), []byte("from-the-image\n"), 0o644)
	os.WriteFile(filepath.Join(root, "www/index.html"), []byte("served-by-the-guest\n"), 0o644)
	os.WriteFile(filepath.Join(root, "usr/bin/not-executable"), []byte("#!/bin/sh\n"), 0o644)
	mkfs := exec.Command("mkfs.ext4", "-q", "-F", "-d", root, "-E", "root_owner=0:0", out, "64M")
	if len(fstype) > 0 && fstype[0] == "erofs" {
		mkfs = exec.Command("mkfs.erofs", "--quiet", "-zlz4", "--all-root", out, root)
	}
	if out, err := mkfs.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", mkfs.Args[0], err, out)
	}
}

// buildVolume makes a small filesystem of the given type holding hello.
func buildVolume(t *testing.T, fstype, out string) {
	t.Helper()
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "hello"), []byte("volume-"+fstype+"\n"), 0o644)
	var cmd *exec.Cmd
	switch fstype {
	case "ext4":
		cmd = exec.Command("mkfs.ext4", "-q", "-F", "-d", src, out, "8M")
	case "erofs":
		cmd = exec.Command("mkfs.erofs", "--quiet", "-zlz4", out, src)
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkfs %s: %v\n%s", fstype, err, b)
	}
}

type execResult struct {
	code           int
	stdout, stderr string
	err            error
}

func guestExec(ctx context.Context, c *agent.Client, args ...string) execResult {
	var out, errb bytes.Buffer
	code, err := c.Exec(ctx, agent.ExecRequest{Command: args, Stdout: &out, Stderr: &errb})
	return execResult{code, out.String(), errb.String(), err}
}

func mustExec(t *testing.T, ctx context.Context, c *agent.Client, args ...string) string {
	t.Helper()
	r := guestExec(ctx, c, args...)
	if r.err != nil || r.code != 0 {
		t.Fatalf("exec %q: code %d err %v stderr %q", args, r.code, r.err, r.stderr)
	}
	return r.stdout
}

func dialGuest(t *testing.T, vm hypervisor.VM) *agent.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := agent.DialFunc(ctx, vm.DialAgent, agent.Options{})
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	return c
}

// TestWorkloadFromDisks boots a real guest through the QEMU driver with an
// image root disk, an overlay disk, volumes and a TAP in a namespace the
// test made, and checks the whole workload contract: process semantics,
// exit status, console output, execs in the image root, read-only disks,
// the guest network both ways, the flush at pause, a restore onto another
// slot's TAP (a fork) and the overlay surviving a stop and a boot.
func TestWorkloadFromDisks(t *testing.T) {
	guesttest.QEMU(t)
	testutil.RequirePrivileged(t, "network namespaces and TAP devices", "ip", "mkfs.ext4", "mkfs.erofs")
	assets := guesttest.Assets(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	d, err := qemu.New(qemu.Config{ShareFile: func(ctx context.Context, src, dst string) error {
		_, err := clone.File(ctx, src, dst, clone.Options{NoSync: true, Logger: slog.New(slog.DiscardHandler)})
		return err
	}})
	if err != nil {
		t.Fatal(err)
	}
	// The image's root disk is built once, outside the instance, and
	// hard-linked in: an immutable file the driver only reads.
	store := t.TempDir()
	buildImageDisk(t, filepath.Join(store, "rootfs.ext4"))
	dir, err := os.MkdirTemp("", "zwl") // short: unix socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Link(filepath.Join(store, "rootfs.ext4"), filepath.Join(dir, "rootfs.ext4")); err != nil {
		t.Fatal(err)
	}
	if err := guest.FormatOverlay(ctx, filepath.Join(dir, "overlay.ext4"), 256<<20); err != nil {
		t.Fatal(err)
	}
	buildVolume(t, "ext4", filepath.Join(dir, "data.ext4"))
	buildVolume(t, "erofs", filepath.Join(dir, "ro.erofs"))
	if err := os.WriteFile(filepath.Join(dir, "scratch.raw"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(filepath.Join(dir, "scratch.raw"), 8<<20)
	rootSum := fileSum(t, filepath.Join(dir, "rootfs.ext4"))

	slot := newSlot(t)
	spec := hypervisor.Spec{ID: "workloadtest", Dir: dir, VCPUs: 1, MemoryBytes: 256 << 20,
		Disks: []hypervisor.Disk{
			{Path: "rootfs.ext4", ReadOnly: true, Serial: agentproto.RootDiskSerial},
			{Path: "overlay.ext4", Serial: agentproto.OverlayDiskSerial},
			{Path: "data.ext4", ReadOnly: true, Serial: "data"},
			{Path: "ro.erofs", ReadOnly: true, Serial: "erofs-vol"},
			{Path: "scratch.raw", Serial: "scratch"},
		},
		NIC: &hypervisor.NIC{TAP: slot.tap, MAC: agentproto.GuestMAC}}
	vm, state, err := d.Boot(ctx, spec, hypervisor.BootAssets{Kernel: assets.Kernel, Initramfs: assets.Initramfs})
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	spec.DriverState = state
	t.Cleanup(func() {
		if vm != nil {
			vm.Quit(context.Background())
		}
	})
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, hypervisor.ConsoleLog))
			t.Logf("console.log:\n%s", b)
		}
	})
	c := dialGuest(t, vm)
	defer func() { c.Close() }() // the last client (subtests replace c)

	root := &agentproto.RootFS{Serial: agentproto.RootDiskSerial, FSType: "ext4", OverlaySerial: agentproto.OverlayDiskSerial}
	vols := []agentproto.Volume{
		{Serial: "data", Path: "/data", ReadOnly: true},
		{Serial: "erofs-vol", Path: "/mnt/erofs", ReadOnly: true, FSType: "erofs"},
	}
	network := &agentproto.NetworkConfig{Address: agentproto.GuestCIDR, Gateway: agentproto.GatewayIP, DNS: []string{"169.254.0.1"}}
	cfg := agent.Config{Hostname: "wl-test", Network: network, Root: root, Volumes: vols,
		Process: &agentproto.Process{Args: []string{"probe", "first arg", "two"}, Env: []string{"GREETING=hello", "EXIT=3"},
			WorkingDir: "/work/dir", User: "app"}}
	start := time.Now()
	if err := c.Configure(ctx, cfg); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	t.Logf("Configure (network, root, volumes, workload) took %v", time.Since(start).Round(time.Millisecond))
	if b, err := os.ReadFile(filepath.Join(dir, hypervisor.ConsoleLog)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "took=") || strings.Contains(line, "agent ready") {
				t.Logf("guest: %s", line)
			}
		}
	}

	t.Run("workload semantics and exit", func(t *testing.T) {
		st, err := c.WaitWorkload(ctx)
		if err != nil || st.Code != 3 || st.Signal != "" {
			t.Fatalf("WaitWorkload = %+v, %v; want code 3", st, err)
		}
		// Its stdout went to console.log, the instance's app log.
		var p probeOutput
		deadline := time.Now().Add(10 * time.Second)
		for {
			b, _ := os.ReadFile(filepath.Join(dir, hypervisor.ConsoleLog))
			if _, line, ok := strings.Cut(string(b), "PROBE "); ok {
				line, _, _ = strings.Cut(line, "\n")
				if err := json.Unmarshal([]byte(strings.TrimSpace(line)), &p); err != nil {
					t.Fatalf("probe output %q: %v", line, err)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no probe output in console.log")
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !slices.Equal(p.Args, []string{"probe", "first arg", "two"}) {
			t.Errorf("args %q", p.Args)
		}
		if p.Cwd != "/work/dir" || p.UID != 1000 || p.GID != 1000 || !slices.Equal(p.Groups, []int{50}) {
			t.Errorf("cwd %q uid %d gid %d groups %v; want /work/dir 1000 1000 [50]", p.Cwd, p.UID, p.GID, p.Groups)
		}
		for _, want := range []string{"GREETING=hello", "HOME=/home/app", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"} {
			if !slices.Contains(p.Env, want) {
				t.Errorf("env %q lacks %q", p.Env, want)
			}
		}
		// A reconnecting host learns of the exit from Hello.
		c.Close()
		c = dialGuest(t, vm)
		if w := c.Hello().Workload; w == nil || w.Exited == nil || w.Exited.Code != 3 {
			t.Errorf("Hello().Workload = %+v", w)
		}
	})

	t.Run("execs run in the image root", func(t *testing.T) {
		if got := mustExec(t, ctx, c, "cat", "/image-marker"); got != "from-the-image\n" {
			t.Errorf("marker %q", got)
		}
		if r := guestExec(ctx, c, "ls", agentproto.InitramfsModulesDir); r.code == 0 {
			t.Errorf("the initramfs is visible to execs: %+v", r)
		}
		// Image env and working dir are exec defaults (docker exec).
		if got := mustExec(t, ctx, c, "sh", "-c", "echo $GREETING; pwd; id -u"); got != "hello\n/work/dir\n0\n" {
			t.Errorf("exec defaults %q", got)
		}
		if got := mustExec(t, ctx, c, "hostname"); got != "wl-test\n" {
			t.Errorf("hostname %q", got)
		}
		if got := mustExec(t, ctx, c, "cat", "/etc/resolv.conf"); got != "nameserver 169.254.0.1\n" {
			t.Errorf("resolv.conf %q", got)
		}
		if r := guestExec(ctx, c, "no-such-command"); r.code != 127 {
			t.Errorf("missing command: %+v", r)
		}
	})

	t.Run("read-only disks", func(t *testing.T) {
		if got := mustExec(t, ctx, c, "cat", "/data/hello", "/mnt/erofs/hello"); got != "volume-ext4\nvolume-erofs\n" {
			t.Errorf("volumes %q", got)
		}
		for _, p := range []string{"/data/new", "/mnt/erofs/new"} {
			if r := guestExec(ctx, c, "sh", "-c", "echo x > "+p); r.code == 0 {
				t.Errorf("wrote %s on a read-only volume", p)
			}
		}
		// The root disk itself is read-only: the guest cannot write the
		// device even bypassing the overlay.
		dev := strings.TrimSpace(mustExec(t, ctx, c, "sh", "-c", `for d in /sys/block/vd*; do [ "$(cat $d/serial)" = `+agentproto.RootDiskSerial+` ] && echo /dev/${d##*/}; done; true`))
		if r := guestExec(ctx, c, "dd", "if=/dev/zero", "of="+dev, "bs=4096", "count=1", "oflag=direct"); r.code == 0 {
			t.Errorf("wrote the read-only root device %s", dev)
		}
		// Writes to the root land in the overlay.
		mustExec(t, ctx, c, "sh", "-c", "echo persisted > /persist.txt") // no sync
	})

	t.Run("guest network inside the slot", func(t *testing.T) {
		mustExec(t, ctx, c, "httpd", "-p", "8080", "-h", "/www")
		var got string
		var err error
		for i := 0; i < 50; i++ {
			if got, err = slot.httpGet(t, "169.254.0.2:8080", "/index.html"); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil || got != "served-by-the-guest\n" {
			t.Fatalf("slot -> guest: %q %v", got, err)
		}
		slot.serve(t, agentproto.GatewayIP+":9090", "served-by-the-slot\n")
		var r execResult
		for i := 0; i < 50; i++ {
			// nc, not wget: Debian's static busybox wget crashes in glibc's
			// resolver even for an address literal.
			if r = guestExec(ctx, c, "sh", "-c", `printf 'GET /hello.txt HTTP/1.0\r\n\r\n' | nc 169.254.0.1 9090`); r.code == 0 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !strings.HasPrefix(r.stdout, "HTTP/1.0 200 OK") || !strings.HasSuffix(r.stdout, "\r\n\r\nserved-by-the-slot\n") {
			t.Fatalf("guest -> slot: %+v", r)
		}
		if got := mustExec(t, ctx, c, "sh", "-c", "ip -o -4 addr show eth0; ip route show default"); !strings.Contains(got, "169.254.0.2/30") || !strings.Contains(got, "default via 169.254.0.1 dev eth0") {
			t.Errorf("guest network: %q", got)
		}
	})

	t.Run("pause flushes the guest's writes into the disk file", func(t *testing.T) {
		nonce := fmt.Sprintf("ZYGOTE-FLUSH-%d", time.Now().UnixNano())
		// O_DIRECT: the write reaches the virtio disk at once (no guest page
		// cache) but nothing asks for a flush: no fsync, no sync.
		mustExec(t, ctx, c, "sh", "-c", `for d in /sys/block/vd*; do [ "$(cat $d/serial)" = scratch ] && dev=/dev/${d##*/}; done; [ -n "$dev" ] && `+
			`printf `+nonce+` | dd of=$dev bs=4096 count=1 conv=sync oflag=direct 2>/dev/null`)
		// QEMU wrote it into the host page cache (cache=writeback)...
		scratch := filepath.Join(dir, "scratch.raw")
		dirtyBefore := pageDirty(t, scratch)
		if err := vm.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		// ...and stop flushed it (fdatasync): with cache=unsafe, or a VMM
		// caching in user space, the page would still be dirty here.
		if pageDirty(t, scratch) {
			t.Error("the disk file's page is still dirty after Pause: stop did not flush the disk")
		}
		if !dirtyBefore {
			t.Log("note: the page was already written back before Pause; the flush check proved nothing this run")
		}
		if _, err := vm.SaveState(ctx); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, len(nonce))
		f, err := os.Open(filepath.Join(dir, "scratch.raw"))
		if err != nil {
			t.Fatal(err)
		}
		f.ReadAt(b, 0)
		f.Close()
		if string(b) != nonce {
			t.Fatalf("scratch disk holds %q after pause+save, want %q", b, nonce)
		}
		vm.Quit(ctx)
	})

	t.Run("restore onto another slot's TAP, as a fork", func(t *testing.T) {
		slot2 := newSlot(t)
		spec.NIC = &hypervisor.NIC{TAP: slot2.tap, MAC: agentproto.GuestMAC}
		restored, rerr := d.Restore(ctx, spec)
		if rerr != nil {
			t.Fatalf("Restore: %v", rerr)
		}
		vm = restored
		c.Close()
		c = dialGuest(t, vm)
		// Nothing changes in the guest: same address, now reached from
		// the second slot (its httpd survived the restore in memory).
		var got string
		var err error
		for i := 0; i < 50; i++ {
			if got, err = slot2.httpGet(t, "169.254.0.2:8080", "/index.html"); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil || got != "served-by-the-guest\n" {
			t.Fatalf("slot2 -> restored guest: %q %v", got, err)
		}
	})

	t.Run("the overlay survives stop and boot", func(t *testing.T) {
		if err := c.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case <-vm.Exited():
		case <-time.After(60 * time.Second):
			t.Fatal("guest did not power off")
		}
		vm.Quit(ctx)
		spec.NIC = nil // a boot may drop the NIC: it is a new machine
		booted, _, err := d.Boot(ctx, spec, hypervisor.BootAssets{})
		if err != nil {
			t.Fatalf("second Boot: %v", err)
		}
		vm = booted
		c.Close()
		c = dialGuest(t, vm)
		if c.Hello().Configured || c.Hello().Workload != nil {
			t.Fatalf("a fresh boot reports %+v", c.Hello())
		}
		// A root that cannot be assembled (no such overlay disk) fails
		// Configure and leaves no mounts behind: the retry below works.
		bad := *root
		bad.OverlaySerial = "no-such-disk"
		if err := c.Configure(ctx, agent.Config{Root: &bad, Process: &agentproto.Process{Args: []string{"true"}}}); err == nil || !strings.Contains(err.Error(), `no disk with serial "no-such-disk"`) {
			t.Errorf("Configure with a missing overlay disk: %v", err)
		}
		// A workload that cannot start fails Configure with 127 / 126 and
		// leaves the guest unconfigured; a retry with the same root works.
		for _, tc := range []struct {
			args []string
			code int
		}{{[]string{"/no/such/program"}, 127}, {[]string{"no-such-program"}, 127}, {[]string{"/usr/bin/not-executable"}, 126}} {
			err := c.Configure(ctx, agent.Config{Root: root, Process: &agentproto.Process{Args: tc.args}})
			var re *agent.RemoteError
			if !errors.As(err, &re) || re.ExitCode != tc.code || !errdefs.IsInvalidArgument(err) {
				t.Errorf("Configure %q: %v (exit code %+v), want %d", tc.args, err, re, tc.code)
			}
		}
		if err := c.Configure(ctx, agent.Config{Root: root, Process: &agentproto.Process{Args: []string{"sleep", "3600"}}}); err != nil {
			t.Fatalf("Configure after failed starts: %v", err)
		}
		if got := mustExec(t, ctx, c, "cat", "/persist.txt"); got != "persisted\n" {
			t.Errorf("overlay after stop/boot: %q", got)
		}
	})

	if got := fileSum(t, filepath.Join(dir, "rootfs.ext4")); got != rootSum {
		t.Error("the read-only root disk file changed")
	}
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("sha256sum", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(out))[0]
}

// TestMicrovmDisksAndNIC: the same devices on the microvm machine
// (virtio-mmio transports): the guest finds its disks by serial and its NIC
// by MAC there too. The root disk is erofs (lz4), the other format package
// images may produce.
func TestMicrovmDisksAndNIC(t *testing.T) {
	guesttest.QEMU(t)
	testutil.RequirePrivileged(t, "network namespaces and TAP devices", "ip", "mkfs.ext4", "mkfs.erofs")
	assets := guesttest.Assets(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	d, err := qemu.New(qemu.Config{Machine: "microvm", ShareFile: func(ctx context.Context, src, dst string) error {
		_, err := clone.File(ctx, src, dst, clone.Options{NoSync: true, Logger: slog.New(slog.DiscardHandler)})
		return err
	}})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "zmv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	buildImageDisk(t, filepath.Join(dir, "rootfs.erofs"), "erofs")
	if err := guest.FormatOverlay(ctx, filepath.Join(dir, "overlay.ext4"), 64<<20); err != nil {
		t.Fatal(err)
	}
	slot := newSlot(t)
	spec := hypervisor.Spec{ID: "microvmdisks", Dir: dir, VCPUs: 1, MemoryBytes: 256 << 20,
		Disks: []hypervisor.Disk{
			{Path: "rootfs.erofs", ReadOnly: true, Serial: agentproto.RootDiskSerial},
			{Path: "overlay.ext4", Serial: agentproto.OverlayDiskSerial},
		},
		NIC: &hypervisor.NIC{TAP: slot.tap, MAC: agentproto.GuestMAC}}
	vm, _, err := d.Boot(ctx, spec, hypervisor.BootAssets{Kernel: assets.Kernel, Initramfs: assets.Initramfs})
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	defer vm.Quit(context.Background())
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, hypervisor.ConsoleLog))
			t.Logf("console.log:\n%s", b)
		}
	})
	c := dialGuest(t, vm)
	defer c.Close()
	err = c.Configure(ctx, agent.Config{
		Network: &agentproto.NetworkConfig{Address: agentproto.GuestCIDR, Gateway: agentproto.GatewayIP},
		Root:    &agentproto.RootFS{Serial: agentproto.RootDiskSerial, FSType: "erofs", OverlaySerial: agentproto.OverlayDiskSerial},
		Process: &agentproto.Process{Args: []string{"httpd", "-f", "-p", "8080", "-h", "/www"}},
	})
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, hypervisor.ConsoleLog))
		t.Fatalf("Configure: %v\nconsole:\n%s", err, b)
	}
	if got := mustExec(t, ctx, c, "sh", "-c", "cat /image-marker || { cat /proc/mounts; ls -la /; }"); got != "from-the-image\n" {
		t.Errorf("marker %q", got)
	}
	// The overlay makes the read-only erofs root writable.
	if got := mustExec(t, ctx, c, "sh", "-c", "echo w > /image-marker && cat /image-marker && grep -c ' / overlay ' /proc/mounts"); got != "w\n1\n" {
		t.Errorf("write through the overlay: %q", got)
	}
	var got string
	for i := 0; i < 50; i++ {
		if got, err = slot.httpGet(t, "169.254.0.2:8080", "/index.html"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || got != "served-by-the-guest\n" {
		t.Fatalf("slot -> microvm guest: %q %v", got, err)
	}
}
