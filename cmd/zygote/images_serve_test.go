package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/images"
	"github.com/zygote/zygote/images/imagestest"
	"github.com/zygote/zygote/internal/testutil"
)

// serve builds the image store from its flags under <data>/images and
// serves /images: a pull through the daemon's socket ends ready in the
// format --image-format chose; a stale upload is cleared at start.
func TestServeImageStore(t *testing.T) {
	testutil.RequirePrivileged(t, "converting images", "mkfs.erofs")
	reg := imagestest.StartRegistry(t)
	ref := reg + "/served/busybox:v1"
	imagestest.PushImage(t, ref, imagestest.BusyboxImage(t))

	dataDir, socket, wait, stop := startServe(t, "--image-format", "erofs", "--insecure-registry", "registry.example:5000")
	served := make(chan error, 1)
	go func() { served <- wait() }()
	waitHealthy(t, socket, served)
	c, err := client.New(socket, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.PullImage(ctx, api.PullImageRequest{Name: ref}); err != nil {
		t.Fatal(err)
	}
	var img api.Image
	deadline := time.Now().Add(time.Minute)
	for img.Status != "ready" {
		if img, err = c.GetImage(ctx, ref); err != nil || img.Status == "failed" || time.Now().After(deadline) {
			t.Fatalf("pull through serve: %+v %v", img, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if img.Format != "erofs" {
		t.Errorf("--image-format erofs made a %q disk", img.Format)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "images", "tags")); err != nil {
		t.Errorf("images are not under <data>/images: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}

	// A restarted daemon still has the image, and clears stale uploads.
	stale := filepath.Join(dataDir, "uploads", "import-1.tar")
	os.MkdirAll(filepath.Dir(stale), 0o700)
	os.WriteFile(stale, []byte("half"), 0o600)
	root := newRootCmd()
	root.SetArgs([]string{"serve", "--data-dir", dataDir, "--socket", socket, "--cache-dir", filepath.Join(t.TempDir(), "cache"), "--log-level", "warn"})
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(sctx) }() // owner: this test; cancel ends it
	defer func() { cancel(); <-done }()
	waitHealthy(t, socket, done)
	if got, err := c.GetImage(ctx, ref); err != nil || got.Digest != img.Digest {
		t.Errorf("after a restart: %+v %v", got, err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("a stale upload survived the restart: %v", err)
	}
}

func TestServeRefusesUnknownImageFormat(t *testing.T) {
	_, _, wait, _ := startServe(t, "--image-format", "xfs")
	if err := wait(); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "--image-format") {
		t.Fatalf("serve --image-format xfs: %v", err)
	}
}

// The InUse seam: before a manager is attached, or with one that cannot
// say, nothing uses an image; once a manager with ImageUsers is attached,
// Delete is refused naming its users.
func TestImageUsersSeam(t *testing.T) {
	testutil.RequirePrivileged(t, "converting images", "mkfs.ext4")
	reg := imagestest.StartRegistry(t)
	ref := reg + "/seam/busybox:v1"
	imagestest.PushImage(t, ref, imagestest.BusyboxImage(t))
	cfg := serveConfig{dataDir: t.TempDir(), images: imageFlags{format: "ext4"}}
	st, users, err := newImageStore(cfg, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	img, err := st.Ensure(ctx, ref, images.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := users.inUse(img.Digest); got != nil {
		t.Errorf("unattached seam reports users %q", got)
	}
	users.attach(struct{}{}) // a manager without ImageUsers
	if got := users.inUse(img.Digest); got != nil {
		t.Errorf("a manager without ImageUsers reports users %q", got)
	}
	users.attach(fakeImageUsers{img.Digest: {"web", "snap-1"}})
	if err := st.Delete(ctx, ref); !errdefs.IsConflict(err) || !strings.Contains(err.Error(), "web, snap-1") {
		t.Fatalf("delete of a used image: %v", err)
	}
	users.attach(fakeImageUsers{})
	if err := st.Delete(ctx, ref); err != nil {
		t.Fatalf("delete once unused: %v", err)
	}
}

// fakeImageUsers is a fake manager: digest → users.
type fakeImageUsers map[string][]string

func (f fakeImageUsers) ImageUsers(digest string) []string { return f[digest] }
