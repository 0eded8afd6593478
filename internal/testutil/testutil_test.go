//go:build linux

package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func fsMagic(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Type
}

// TestMounts checks each helper mounts the filesystem it names, that the
// directory is writable, and that cleanup leaves no mount, loop device or
// image behind.
func TestMounts(t *testing.T) {
	cases := []struct {
		name  string
		mount func(testing.TB) string
		magic int64
	}{
		{"xfs", XFS, unix.XFS_SUPER_MAGIC},
		{"btrfs", Btrfs, unix.BTRFS_SUPER_MAGIC},
		{"ext4-image", func(t testing.TB) string { return MountLoop(t, LoopFS{Type: "ext4", Size: 32 << 20}) }, unix.EXT4_SUPER_MAGIC},
		{"tmpfs", func(t testing.TB) string { return Tmpfs(t, 1<<20) }, unix.TMPFS_MAGIC},
		{"shared-xfs", SharedXFS, unix.XFS_SUPER_MAGIC},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var dir string
			t.Run("use", func(t *testing.T) {
				dir = tc.mount(t)
				if got := fsMagic(t, dir); got != tc.magic {
					t.Fatalf("%s: filesystem magic 0x%x, want 0x%x", dir, got, tc.magic)
				}
				if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
					t.Fatal(err)
				}
			})
			if dir == "" {
				t.Skip("mount helper skipped")
			}
			if isMountPoint(dir) {
				t.Errorf("%s is still mounted after cleanup", dir)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("%s still exists after cleanup (err %v)", dir, err)
			}
			assertNoLoopFor(t, dir)
		})
	}
}

// assertNoLoopFor fails if a loop device still backs an image next to dir.
func assertNoLoopFor(t *testing.T, dir string) {
	t.Helper()
	base := filepath.Dir(dir)
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), base+"/") {
			t.Errorf("loop device %s still backs %s", f, strings.TrimSpace(string(b)))
		}
	}
}

// TestSharedXFS checks that overlapping users share one mount but get
// private directories, and that the mount goes away with the last user.
func TestSharedXFS(t *testing.T) {
	RequirePrivileged(t, "a loop-mounted XFS filesystem", "mkfs.xfs", "losetup")
	var outer, inner string
	t.Run("outer", func(t *testing.T) {
		outer = SharedXFS(t)
		t.Run("inner", func(t *testing.T) {
			inner = SharedXFS(t)
		})
		if inner == outer || filepath.Dir(inner) != filepath.Dir(outer) {
			t.Errorf("overlapping users: dirs %s and %s, want distinct dirs on one mount", outer, inner)
		}
		if _, err := os.Stat(inner); !os.IsNotExist(err) {
			t.Errorf("%s survived its test (err %v)", inner, err)
		}
		if !isMountPoint(filepath.Dir(outer)) {
			t.Errorf("shared mount was unmounted while %s still uses it", t.Name())
		}
	})
	if outer == "" {
		t.Skip("SharedXFS skipped")
	}
	if isMountPoint(filepath.Dir(outer)) {
		t.Errorf("shared mount %s outlived its last user", filepath.Dir(outer))
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.m != nil || shared.refs != 0 {
		t.Errorf("shared state not reset: %+v refs %d", shared.m, shared.refs)
	}
}

func TestExt4Dir(t *testing.T) {
	dir := Ext4Dir(t)
	if got := fsMagic(t, dir); got != unix.EXT4_SUPER_MAGIC {
		t.Fatalf("Ext4Dir returned a 0x%x filesystem", got)
	}
}

// recordTB captures Skipf/Fatalf instead of stopping the goroutine.
type recordTB struct {
	testing.TB
	skipped, failed string
}

func (r *recordTB) Helper()                           {}
func (r *recordTB) Skipf(format string, args ...any)  { r.skipped = fmt.Sprintf(format, args...) }
func (r *recordTB) Fatalf(format string, args ...any) { r.failed = fmt.Sprintf(format, args...) }

func TestRequirePrivileged(t *testing.T) {
	toolPackages["zygote-fake-mkfs"] = "zygote-fake-progs"
	defer delete(toolPackages, "zygote-fake-mkfs")
	cases := []struct {
		name      string
		env       string
		tools     []string
		wantSkip  []string
		wantFatal []string
		notWant   string
	}{
		{name: "tool present", tools: []string{"sh"}},
		{name: "missing tool with hint", tools: []string{"zygote-fake-mkfs"},
			wantSkip: []string{"make a thing", "zygote-fake-mkfs (apt-get install zygote-fake-progs)", EnvRequirePrivileged + "=1"}},
		{name: "missing tool without hint", tools: []string{"zygote-no-such-tool"},
			wantSkip: []string{"needs zygote-no-such-tool"}, notWant: "apt-get"},
		{name: "required turns skip into failure", env: "1", tools: []string{"zygote-fake-mkfs"},
			wantFatal: []string{"apt-get install zygote-fake-progs", "a failure, not a skip"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(EnvRequirePrivileged, tc.env)
			if os.Geteuid() != 0 && tc.wantSkip == nil && tc.wantFatal == nil {
				t.Skip("expects nothing missing, but not root")
			}
			rec := &recordTB{TB: t}
			RequirePrivileged(rec, "make a thing", tc.tools...)
			check := func(kind, got string, want []string) {
				if want == nil && got != "" {
					t.Errorf("unexpected %s: %q", kind, got)
				}
				if want != nil && got == "" {
					t.Errorf("expected a %s", kind)
				}
				for _, w := range want {
					if got != "" && !strings.Contains(got, w) {
						t.Errorf("%s message %q lacks %q", kind, got, w)
					}
				}
			}
			check("skip", rec.skipped, tc.wantSkip)
			check("failure", rec.failed, tc.wantFatal)
			if tc.notWant != "" && strings.Contains(rec.skipped+rec.failed, tc.notWant) {
				t.Errorf("message %q should not contain %q", rec.skipped+rec.failed, tc.notWant)
			}
		})
	}
}

// TestSweepStale plants what a killed test binary leaves behind (a mount
// in a zygote-testfs-<dead pid>- directory) and checks the sweep removes
// it, while a live process's directory is left alone.
func TestSweepStale(t *testing.T) {
	RequirePrivileged(t, "mounting a tmpfs", "mount")
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	stale, err := os.MkdirTemp("", fmt.Sprintf("zygote-testfs-%d-", dead))
	if err != nil {
		t.Fatal(err)
	}
	live, err := os.MkdirTemp("", fmt.Sprintf("zygote-testfs-%d-", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(live)
	mnt := filepath.Join(stale, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if isMountPoint(mnt) {
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
		_ = os.RemoveAll(stale)
	}()
	sweepStale()
	if isMountPoint(mnt) {
		t.Errorf("stale mount %s survived the sweep", mnt)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale dir %s survived the sweep (err %v)", stale, err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("the sweep removed a live process's dir: %v", err)
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/tmp/a\040b`: "/tmp/a b",
		`/plain`:      "/plain",
		`/x\134y`:     `/x\y`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}
