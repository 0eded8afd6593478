package instances_test

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/instances/instancestest"
	"github.com/zygote/zygote/internal/testutil"
)

// TestVolumes: attachment rules (one writer, shared readers, never both),
// the disks the VM gets (hard links to the volume's disk), fork and
// snapshot refused with a writable volume, delete refused while attached.
func TestVolumes(t *testing.T) {
	testutil.RequirePrivileged(t, "formatting disks", "mkfs.ext4")
	dataDir := t.TempDir()
	imgs := newFakeImages(t, dataDir)
	h := instancestest.NewWithImages(t, dataDir, instancestest.Clone, imgs)
	for _, name := range []string{"rw", "ro"} {
		if _, err := h.M.CreateVolume(ctx, name, 64<<20, "", nil); err != nil {
			t.Fatal(err)
		}
	}
	rw, _ := h.M.GetVolume(ctx, "rw")
	create := func(name string, mounts ...instances.VolumeMount) (instances.Instance, error) {
		return h.M.Create(ctx, instances.CreateRequest{Name: name, Image: "registry.test/app:1", OverlayBytes: 64 << 20, Volumes: mounts})
	}
	writer, err := create("writer", instances.VolumeMount{Volume: "rw", MountPath: "/data"}, instances.VolumeMount{Volume: "ro", MountPath: "/ref", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	h.WaitRunning("writer")
	if _, err := create("reader", instances.VolumeMount{Volume: "ro", MountPath: "/ref", ReadOnly: true}); err != nil {
		t.Fatalf("a second read-only attachment: %v", err)
	}
	disks := h.VM(writer.ID).Spec().Disks
	if len(disks) != 4 || disks[2].Serial != "zygote-vol0" || disks[2].ReadOnly || disks[3].Serial != "zygote-vol1" || !disks[3].ReadOnly {
		t.Errorf("disks %+v", disks)
	}
	if inode(t, filepath.Join(dataDir, "instances", writer.ID, "vol0.ext4")) != inode(t, filepath.Join(dataDir, "volumes", rw.ID, "volume.ext4")) {
		t.Error("the writable volume is not the volume's own disk")
	}
	for name, tc := range map[string]struct {
		mounts []instances.VolumeMount
		class  func(error) bool
	}{
		"writable taken":          {[]instances.VolumeMount{{Volume: "rw", MountPath: "/d"}}, errdefs.IsConflict},
		"read-only of a writable": {[]instances.VolumeMount{{Volume: "rw", MountPath: "/d", ReadOnly: true}}, errdefs.IsConflict},
		"writable of a shared":    {[]instances.VolumeMount{{Volume: "ro", MountPath: "/d"}}, errdefs.IsConflict},
		"unknown volume":          {[]instances.VolumeMount{{Volume: "nope", MountPath: "/d"}}, errdefs.IsNotFound},
		"system directory":        {[]instances.VolumeMount{{Volume: "ro", MountPath: "/etc", ReadOnly: true}}, errdefs.IsInvalidArgument},
		"relative path":           {[]instances.VolumeMount{{Volume: "ro", MountPath: "data", ReadOnly: true}}, errdefs.IsInvalidArgument},
		"same path twice":         {[]instances.VolumeMount{{Volume: "ro", MountPath: "/d", ReadOnly: true}, {Volume: "rw", MountPath: "/d"}}, errdefs.IsInvalidArgument},
	} {
		if _, err := create("x", tc.mounts...); !tc.class(err) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := h.M.Fork(ctx, "writer", instances.ForkRequest{Name: "f", FromRunning: true}); !errdefs.IsConflict(err) {
		t.Errorf("fork with a writable volume: %v", err)
	}
	if _, err := h.M.CreateSnapshot(ctx, "writer", instances.SnapshotRequest{Kind: instances.SnapshotStandby}); !errdefs.IsConflict(err) {
		t.Errorf("snapshot with a writable volume: %v", err)
	}
	h.WaitRunning("reader")
	ro, _ := h.M.GetVolume(ctx, "ro")
	if out, err := h.M.Fork(ctx, "reader", instances.ForkRequest{Name: "reader-2", FromRunning: true}); err != nil {
		t.Errorf("fork with read-only volumes only: %v", err)
	} else if inode(t, filepath.Join(dataDir, "instances", out[0].ID, "vol0.ext4")) != inode(t, filepath.Join(dataDir, "volumes", ro.ID, "volume.ext4")) {
		t.Error("the fork of a read-only attachment does not attach the volume itself")
	}
	users := instances.VolumeUsers(h.Store)(rw.ID)
	if !slices.Equal(users, []string{"instance writer"}) {
		t.Errorf("users of rw %q", users)
	}
	if err := h.M.DeleteVolume(ctx, "rw"); !errdefs.IsConflict(err) {
		t.Errorf("delete an attached volume: %v", err)
	}
	if err := h.M.Delete(ctx, "writer", true); err != nil {
		t.Fatal(err)
	}
	if _, err := create("writer-2", instances.VolumeMount{Volume: "rw", MountPath: "/data"}); err != nil {
		t.Errorf("the writable volume after its user went: %v", err)
	}
	if err := h.M.Delete(ctx, "writer-2", true); err != nil {
		t.Fatal(err)
	}
	if err := h.M.DeleteVolume(ctx, "rw"); err != nil {
		t.Errorf("delete a detached volume: %v", err)
	}
}
