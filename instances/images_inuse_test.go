package instances_test

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/images"
	"github.com/zygote/zygote/images/imagestest"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/instances/instancestest"
	"github.com/zygote/zygote/internal/testutil"
)

// realImages adapts the real images store, as cmd/zygote does.
type realImages struct{ s *images.Store }

func (a realImages) Ensure(ctx context.Context, ref string) (instances.ImageConfig, error) {
	img, err := a.s.Ensure(ctx, ref, images.PullOptions{})
	return instances.ImageConfig{Name: img.Name, Digest: img.Digest, Format: img.Format, Entrypoint: img.Entrypoint,
		Cmd: img.Cmd, Env: img.Env, WorkingDir: img.WorkingDir, User: img.User}, err
}

func (a realImages) RootDisk(digest string) (string, error) { return a.s.RootDisk(digest) }

// TestImageInUse: with the real image store and a real registry, a create
// pulls the image; deleting the image while an instance or a snapshot uses
// it is a conflict naming them; once they are gone it is deleted, and a
// fork made before keeps its own link to the disk.
func TestImageInUse(t *testing.T) {
	testutil.RequirePrivileged(t, "root disks", "mkfs.ext4")
	reg := imagestest.StartRegistry(t)
	ref := reg + "/busybox:inuse"
	imagestest.PushImage(t, ref, imagestest.BusyboxImage(t))
	dataDir := t.TempDir()
	h := instancestest.New(t, dataDir, instancestest.Clone) // for its store
	h.Close()
	var users func(string) []string
	s, err := images.Open(images.Config{Root: filepath.Join(dataDir, "images"), InUse: func(d string) []string { return users(d) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	h = instancestest.NewWithImages(t, dataDir, instancestest.Clone, realImages{s})
	users = instances.ImageUsers(h.Store)

	in, err := h.M.Create(ctx, instances.CreateRequest{Name: "app", Image: ref, Cmd: []string{"-c", "true"}, OverlayBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	h.WaitRunning("app")
	if _, err := h.M.Standby(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.M.CreateSnapshot(ctx, "app", instances.SnapshotRequest{Name: "snap", Kind: instances.SnapshotStandby}); err != nil {
		t.Fatal(err)
	}
	f := fork(t, h, "app", instances.ForkRequest{Name: "app-2"})
	err = s.Delete(ctx, ref)
	if !errdefs.IsConflict(err) || !strings.Contains(err.Error(), "instance app") || !strings.Contains(err.Error(), "snapshot snap") {
		t.Fatalf("delete an image in use: %v", err)
	}
	// The source and its snapshot go; the fork alone still holds the image.
	if err := h.M.Delete(ctx, "app", true); err != nil {
		t.Fatal(err)
	}
	snaps, _ := h.M.ListSnapshots(ctx, instances.SnapshotFilter{})
	for _, sn := range snaps {
		if err := h.M.DeleteSnapshot(ctx, sn.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, ref); !errdefs.IsConflict(err) || !slices.Equal(users(in.Spec.ImageDigest), []string{"instance app-2"}) {
		t.Fatalf("delete an image a fork uses: %v (users %q)", err, users(in.Spec.ImageDigest))
	}
	if _, err := h.M.Restore(ctx, "app-2"); err != nil {
		t.Fatalf("the fork after its source went: %v", err)
	}
	if err := h.M.Delete(ctx, "app-2", true); err != nil {
		t.Fatal(err)
	}
	if got := users(in.Spec.ImageDigest); len(got) != 0 {
		t.Fatalf("users left %q", got)
	}
	if err := s.Delete(ctx, ref); err != nil {
		t.Fatalf("delete an unused image: %v", err)
	}
	if _, err := s.RootDisk(f.Spec.ImageDigest); !errdefs.IsNotFound(err) {
		t.Errorf("the root disk after the image's deletion: %v", err)
	}
}
