package instances_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/agentproto"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/instances/instancestest"
	"github.com/zygote/zygote/internal/testutil"
)

// fakeImages is a fake image store: one ready image whose root disk is a
// 0444 file under <data>/images, as the images package commits it.
type fakeImages struct {
	disk   string
	img    instances.ImageConfig
	pulled int
}

func newFakeImages(t *testing.T, dataDir string) *fakeImages {
	t.Helper()
	dir := filepath.Join(dataDir, "images", "blobs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "rootfs.ext4")
	if err := os.WriteFile(disk, []byte("an immutable root disk"), 0o444); err != nil {
		t.Fatal(err)
	}
	return &fakeImages{disk: disk, img: instances.ImageConfig{
		Name: "registry.test/app:1", Digest: "sha256:" + strings.Repeat("ab", 32), Format: "ext4",
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"serve"}, Env: map[string]string{"A": "image", "B": "image"},
		WorkingDir: "/srv", User: "app",
	}}
}

func (f *fakeImages) Ensure(_ context.Context, ref string) (instances.ImageConfig, error) {
	if ref != "registry.test/app:1" {
		return instances.ImageConfig{}, fmt.Errorf("image %s: %w", ref, errdefs.ErrNotFound)
	}
	f.pulled++
	return f.img, nil
}

func (f *fakeImages) RootDisk(digest string) (string, error) {
	if digest != f.img.Digest {
		return "", errdefs.ErrNotFound
	}
	return f.disk, nil
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// TestCreateFromImage: an image instance gets its own hard link to the
// image's root disk and its own sparse overlay; the VM sees them as a
// read-only root and a writable overlay; a fork shares the root disk's
// inode and owns a copy of the overlay; the image's users are named.
func TestCreateFromImage(t *testing.T) {
	testutil.RequirePrivileged(t, "formatting overlay disks", "mkfs.ext4")
	dataDir := t.TempDir()
	imgs := newFakeImages(t, dataDir)
	h := instancestest.NewWithImages(t, dataDir, instancestest.Clone, imgs)

	in, err := h.M.Create(ctx, instances.CreateRequest{Name: "app", Image: "registry.test/app:1",
		Cmd: []string{"run", "fast"}, Env: map[string]string{"B": "request"}, OverlayBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	h.WaitRunning("app")
	s := in.Spec
	if s.ImageDigest != imgs.img.Digest || s.OverlayBytes != 64<<20 || !slices.Equal(s.Entrypoint, []string{"/bin/sh", "-c"}) ||
		!slices.Equal(s.Cmd, []string{"run", "fast"}) || !slices.Equal(s.WorkloadEnv, []string{"A=image", "B=request"}) ||
		s.WorkingDir != "/srv" || s.User != "app" {
		t.Errorf("spec %+v", s)
	}
	dir := filepath.Join(dataDir, "instances", in.ID)
	if inode(t, filepath.Join(dir, "rootfs.ext4")) != inode(t, imgs.disk) {
		t.Error("the root disk is not a hard link to the image's")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, "overlay.ext4"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 64<<20 || st.Blocks*512 >= st.Size/2 {
		t.Errorf("overlay: size %d, %d bytes allocated: want 64 MiB, sparse", st.Size, st.Blocks*512)
	}
	disks := h.VM(in.ID).Spec().Disks
	if len(disks) != 2 || !disks[0].ReadOnly || disks[0].Serial != agentproto.RootDiskSerial || disks[1].ReadOnly || disks[1].Serial != agentproto.OverlayDiskSerial {
		t.Errorf("disks %+v", disks)
	}

	if _, err := h.M.Standby(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	f := fork(t, h, "app", instances.ForkRequest{Name: "app-2", TargetState: instances.StateStandby})
	fdir := filepath.Join(dataDir, "instances", f.ID)
	if inode(t, filepath.Join(fdir, "rootfs.ext4")) != inode(t, imgs.disk) {
		t.Error("the fork's root disk is not the image's inode")
	}
	if inode(t, filepath.Join(fdir, "overlay.ext4")) == inode(t, filepath.Join(dir, "overlay.ext4")) {
		t.Error("the fork shares its source's overlay")
	}
	if f.Spec.ImageDigest != imgs.img.Digest || !slices.Equal(f.Spec.Cmd, s.Cmd) {
		t.Errorf("fork spec %+v", f.Spec)
	}

	users := instances.ImageUsers(h.Store)(imgs.img.Digest)
	if !slices.Equal(users, []string{"instance app", "instance app-2"}) && !slices.Equal(users, []string{"instance app-2", "instance app"}) {
		t.Errorf("users %q", users)
	}
	if _, err := h.M.CreateSnapshot(ctx, "app", instances.SnapshotRequest{Name: "keep", Kind: instances.SnapshotStandby}); err != nil {
		t.Fatal(err)
	}
	if err := h.M.Delete(ctx, "app", true); err != nil {
		t.Fatal(err)
	}
	users = instances.ImageUsers(h.Store)(imgs.img.Digest)
	slices.Sort(users)
	if !slices.Equal(users, []string{"instance app-2", "snapshot keep"}) {
		t.Errorf("users after deleting the source %q", users)
	}
	if got := instances.ImageUsers(h.Store)("sha256:" + strings.Repeat("cd", 32)); len(got) != 0 {
		t.Errorf("users of another digest %q", got)
	}
}

// TestCreateImageRefusals: bad image requests change nothing.
func TestCreateImageRefusals(t *testing.T) {
	dataDir := t.TempDir()
	imgs := newFakeImages(t, dataDir)
	h := instancestest.NewWithImages(t, dataDir, instancestest.Clone, imgs)
	noImages := instancestest.New(t, "", instancestest.NoClone)
	imgs.img.Entrypoint, imgs.img.Cmd = nil, nil
	for _, tc := range []struct {
		name  string
		h     *instancestest.Harness
		req   instances.CreateRequest
		class func(error) bool
	}{
		{"no image store", noImages, instances.CreateRequest{Name: "a", Image: "registry.test/app:1"}, errdefs.IsNotImplemented},
		{"unknown image", h, instances.CreateRequest{Name: "a", Image: "registry.test/nope:1"}, errdefs.IsNotFound},
		{"nothing to run", h, instances.CreateRequest{Name: "a", Image: "registry.test/app:1"}, errdefs.IsInvalidArgument},
		{"overlay too small", h, instances.CreateRequest{Name: "a", Image: "registry.test/app:1", Cmd: []string{"x"}, OverlayBytes: 1 << 20}, errdefs.IsInvalidArgument},
		{"overlay without image", h, instances.CreateRequest{Name: "a", OverlayBytes: 64 << 20}, errdefs.IsInvalidArgument},
	} {
		_, err := tc.h.M.Create(ctx, tc.req)
		if !tc.class(err) {
			t.Errorf("%s: %v", tc.name, err)
		}
		if entries, _ := os.ReadDir(filepath.Join(tc.h.DataDir, "instances")); len(entries) != 0 {
			t.Errorf("%s: left %d instance directories", tc.name, len(entries))
		}
	}
}

// TestCreateImageDiskFull: a data disk too full for the overlay's
// metadata fails the create with ErrResourceExhausted (507) and leaves
// nothing behind.
func TestCreateImageDiskFull(t *testing.T) {
	testutil.RequirePrivileged(t, "a small loop-mounted filesystem", "mkfs.ext4")
	dataDir := testutil.MountLoop(t, testutil.LoopFS{Type: "ext4", Size: 48 << 20})
	imgs := newFakeImages(t, dataDir)
	h := instancestest.NewWithImages(t, dataDir, instancestest.Clone, imgs)
	// Fill the disk.
	fill, err := os.Create(filepath.Join(dataDir, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for {
		if _, err := fill.Write(buf); err != nil {
			break
		}
	}
	fill.Close()
	_, err = h.M.Create(ctx, instances.CreateRequest{Name: "full", Image: "registry.test/app:1", OverlayBytes: 8 << 30})
	if !errdefs.IsResourceExhausted(err) {
		t.Fatalf("create on a full disk: %v, want ErrResourceExhausted", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dataDir, "instances")); len(entries) != 0 {
		t.Errorf("left %d instance directories", len(entries))
	}
	if got := instances.ImageUsers(h.Store)(imgs.img.Digest); len(got) != 0 {
		t.Errorf("users after a failed create: %q", got)
	}
}

// TestImageProgramExit: an image program's exit stops the instance with
// its exit code and message (hypeman's semantics), a program that cannot
// start does so at once with 127, and a start runs the program again.
func TestImageProgramExit(t *testing.T) {
	testutil.RequirePrivileged(t, "formatting overlay disks", "mkfs.ext4")
	dataDir := t.TempDir()
	h := instancestest.NewWithImages(t, dataDir, instancestest.Clone, newFakeImages(t, dataDir))
	for _, tc := range []struct {
		name       string
		entrypoint []string
		code       int
		msg        string
	}{
		{"exits", []string{"exit", "3"}, 3, "exited with code 3"},
		{"missing", []string{"missing"}, 127, "the program could not start (exit code 127): start missing: no such file"},
	} {
		if _, err := h.M.Create(ctx, instances.CreateRequest{Name: tc.name, Image: "registry.test/app:1", Entrypoint: tc.entrypoint, Cmd: []string{}, OverlayBytes: 64 << 20}); err != nil {
			t.Fatal(err)
		}
		for round := 0; round < 2; round++ {
			got := h.WaitState(tc.name, instances.StateStopped)
			if got.State != instances.StateStopped || got.ExitCode == nil || *got.ExitCode != tc.code || got.ExitMessage != tc.msg {
				t.Fatalf("%s round %d: state %s exit %v %q", tc.name, round, got.State, got.ExitCode, got.ExitMessage)
			}
			if h.VM(got.ID) != nil {
				t.Fatalf("%s: the VM still runs after the program ended", tc.name)
			}
			if round == 0 {
				if _, err := h.M.Start(ctx, tc.name); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// A program that keeps running keeps the instance Running.
	if _, err := h.M.Create(ctx, instances.CreateRequest{Name: "serves", Image: "registry.test/app:1", OverlayBytes: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if got := h.WaitRunning("serves"); got.ExitCode != nil {
		t.Errorf("a running program has exit code %v", *got.ExitCode)
	}
}
