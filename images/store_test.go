package images

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/images/imagestest"
)

// TestPullAndReadBack pulls a three-layer image from a real registry in
// each disk format and reads the committed disk back through a read-only
// loop mount.
func TestPullAndReadBack(t *testing.T) {
	reg := imagestest.StartRegistry(t)
	ref := reg + "/test/layered:v1"
	digest := imagestest.PushImage(t, ref, layeredImage(t))
	for _, format := range []string{FormatExt4, FormatErofs} {
		t.Run(format, func(t *testing.T) {
			var mu sync.Mutex
			var seen []Status
			s := newStore(t, Config{Format: format})
			_, err := s.Pull(ref, PullOptions{OnProgress: func(i Image) {
				mu.Lock()
				if len(seen) == 0 || seen[len(seen)-1] != i.Status {
					seen = append(seen, i.Status)
				}
				mu.Unlock()
			}})
			if err != nil {
				t.Fatal(err)
			}
			img, err := s.Wait(context.Background(), ref)
			if err != nil {
				t.Fatalf("pull: %v", err)
			}
			mu.Lock()
			if want := []Status{StatusPending, StatusPulling, StatusConverting}; !reflect.DeepEqual(seen, want) {
				t.Errorf("progress statuses %v, want %v", seen, want)
			}
			mu.Unlock()
			if img.Status != StatusReady || img.Digest != digest || img.Format != format || img.SizeBytes == 0 {
				t.Errorf("image = %+v", img)
			}
			if !reflect.DeepEqual(img.Entrypoint, []string{"/bin/suid"}) || !reflect.DeepEqual(img.Cmd, []string{"-x"}) ||
				!reflect.DeepEqual(img.Env, map[string]string{"A": "1", "B": "two=2"}) || img.WorkingDir != "/data" || img.User != "1000" {
				t.Errorf("config fields = %+v", img)
			}
			got, err := s.Get(ref)
			if err != nil || got.Status != StatusReady || got.Digest != digest {
				t.Errorf("Get = %+v, %v", got, err)
			}
			disk, err := s.RootDisk(digest)
			if err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(disk)
			if err != nil || st.Mode().Perm() != 0o444 {
				t.Fatalf("root disk %s: %v, mode %v", disk, err, st.Mode())
			}
			if names := dirNames(t, filepath.Join(s.root, "tmp")); len(names) != 0 {
				t.Errorf("staging left after success: %v", names)
			}
			checkTree(t, mountRO(t, disk, format))
		})
	}
}

func TestPullMissingTag(t *testing.T) {
	reg := imagestest.StartRegistry(t)
	imagestest.PushImage(t, reg+"/test/bb:present", imagestest.BusyboxImage(t))
	s := newStore(t, Config{})
	img, err := pullWait(t, s, reg+"/test/bb:missing")
	if !errdefs.IsNotFound(err) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if img.Status != StatusFailed || !strings.Contains(img.Error, "MANIFEST_UNKNOWN") {
		t.Errorf("image = %+v, want failed with the registry's MANIFEST_UNKNOWN", img)
	}
	got, err := s.Get(reg + "/test/bb:missing")
	if err != nil || got.Status != StatusFailed {
		t.Errorf("Get after failure = %+v, %v", got, err)
	}
	assertEmptyStore(t, s)
	// A failed record is forgotten by Delete.
	if err := s.Delete(context.Background(), reg+"/test/bb:missing"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(reg + "/test/bb:missing"); !errdefs.IsNotFound(err) {
		t.Errorf("Get after Delete: %v", err)
	}
}

func TestPullCorruptBlob(t *testing.T) {
	reg := imagestest.NewRegistry(t, imagestest.RegistryOptions{})
	ref := reg.Addr + "/test/bb:v1"
	img := imagestest.BusyboxImage(t)
	imagestest.PushImage(t, ref, img)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	blob := reg.BlobPath(d.String())
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(b) / 2; i < len(b)/2+64; i++ {
		b[i] ^= 0xff // same size, different content
	}
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}
	s := newStore(t, Config{})
	got, err := pullWait(t, s, ref)
	if !errors.Is(err, ErrDigestMismatch) || got.Status != StatusFailed {
		t.Fatalf("pull = %+v, %v; want failed with ErrDigestMismatch", got, err)
	}
	assertEmptyStore(t, s)
}

func TestPullRefusesEscapingLayer(t *testing.T) {
	reg := imagestest.StartRegistry(t)
	ref := reg + "/test/evil:v1"
	imagestest.PushImage(t, ref, imagestest.Image(t, v1Config(), imagestest.Layer(t, []imagestest.Entry{
		{Name: "ok", Body: []byte("fine")},
		{Name: "../../etc/x", Body: []byte("escape")},
	})))
	s := newStore(t, Config{})
	got, err := pullWait(t, s, ref)
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(got.Error, "../../etc/x") {
		t.Fatalf("pull = %+v, %v; want refused naming ../../etc/x", got, err)
	}
	if _, err := os.Stat("/etc/x"); err == nil {
		t.Error("/etc/x exists on the host")
	}
	assertEmptyStore(t, s)
}
