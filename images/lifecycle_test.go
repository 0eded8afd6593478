package images

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/images/imagestest"
	"github.com/zygote/zygote/internal/testutil"
)

func TestDeleteInUse(t *testing.T) {
	reg := imagestest.StartRegistry(t)
	refA, refB := reg+"/test/bb:a", reg+"/test/bb:b"
	img := imagestest.BusyboxImage(t)
	digest := imagestest.PushImage(t, refA, img)
	imagestest.PushImage(t, refB, img)
	var users atomic.Value
	users.Store([]string{"vm-one", "snap-two"})
	s := newStore(t, Config{InUse: func(d string) []string {
		if d != digest {
			t.Errorf("InUse asked about %s", d)
		}
		return users.Load().([]string)
	}})
	for _, ref := range []string{refA, refB} {
		if _, err := pullWait(t, s, ref); err != nil {
			t.Fatal(err)
		}
	}
	err := s.Delete(context.Background(), refA)
	if !errdefs.IsConflict(err) || !strings.Contains(err.Error(), "vm-one, snap-two") {
		t.Fatalf("Delete in use = %v, want ErrConflict naming the users", err)
	}
	if _, err := s.RootDisk(digest); err != nil {
		t.Fatalf("root disk gone after a refused delete: %v", err)
	}
	users.Store([]string(nil))
	if err := s.Delete(context.Background(), refA); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RootDisk(digest); err != nil {
		t.Fatalf("root disk removed while tag b still points at it: %v", err)
	}
	if err := s.Delete(context.Background(), refB); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RootDisk(digest); !errdefs.IsNotFound(err) {
		t.Fatalf("RootDisk after the last tag's delete: %v", err)
	}
	if err := s.Delete(context.Background(), refB); !errdefs.IsNotFound(err) {
		t.Fatalf("second Delete = %v, want ErrNotFound", err)
	}
	assertEmptyStore(t, s)
}

// randomLayer holds one incompressible file of size bytes.
func randomLayer(t testing.TB, size int) v1.Layer {
	body := make([]byte, size)
	rand.New(rand.NewSource(int64(size))).Read(body)
	return imagestest.Layer(t, []imagestest.Entry{{Name: "blob", Body: body}})
}

// TestPullDiskFull: a data disk that fills while flattening, or while
// building the root disk, fails the pull as ErrResourceExhausted (507)
// and leaves nothing behind.
func TestPullDiskFull(t *testing.T) {
	reg := imagestest.StartRegistry(t)
	for _, tc := range []struct {
		name string
		size int
	}{
		{"while flattening", 40 << 20},
		{"while building the disk", 18 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := reg + "/test/big:" + strings.ReplaceAll(tc.name, " ", "-")
			imagestest.PushImage(t, ref, imagestest.Image(t, v1Config(), randomLayer(t, tc.size)))
			root := testutil.MountLoop(t, testutil.LoopFS{Type: "ext4", Size: 32 << 20})
			s := newStore(t, Config{Root: filepath.Join(root, "images")})
			got, err := pullWait(t, s, ref)
			if !errdefs.IsResourceExhausted(err) || got.Status != StatusFailed {
				t.Fatalf("pull = %+v, %v; want failed with ErrResourceExhausted", got, err)
			}
			t.Logf("error: %v", err)
			assertEmptyStore(t, s)
		})
	}
}

// TestConcurrentPullsRunOnce counts blob fetches through a proxy: five
// pulls of one name, and a pull of a second name for the same digest, all
// at once, fetch the layer once.
func TestConcurrentPullsRunOnce(t *testing.T) {
	reg := imagestest.StartRegistry(t)
	img := imagestest.Image(t, v1Config(), randomLayer(t, 8<<20))
	imagestest.PushImage(t, reg+"/test/x:one", img)
	imagestest.PushImage(t, reg+"/test/x:two", img)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	var blobGets atomic.Int32
	target, _ := url.Parse("http://" + reg)
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+ld.String()) {
			blobGets.Add(1)
		}
		proxy.ServeHTTP(w, r)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	s := newStore(t, Config{MaxConversions: 4})
	refs := []string{"one", "one", "one", "one", "one", "two"}
	var wg sync.WaitGroup
	results := make([]Image, len(refs))
	errs := make([]error, len(refs))
	for i, tag := range refs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = pullWait(t, s, addr+"/test/x:"+tag)
		}()
	}
	wg.Wait()
	for i := range refs {
		if errs[i] != nil || results[i].Status != StatusReady || results[i].Digest != results[0].Digest {
			t.Errorf("pull %d: %+v, %v", i, results[i], errs[i])
		}
	}
	if n := blobGets.Load(); n != 1 {
		t.Errorf("layer fetched %d times, want 1", n)
	}
	if names := dirNames(t, filepath.Join(s.root, "blobs", "sha256")); len(names) != 1 {
		t.Errorf("image directories: %v", names)
	}
}

func TestPullBasicAuth(t *testing.T) {
	reg := imagestest.NewRegistry(t, imagestest.RegistryOptions{User: "zy", Password: "s3cret"})
	ref := reg.Addr + "/test/bb:v1"
	auth := &authn.Basic{Username: "zy", Password: "s3cret"}
	imagestest.PushImage(t, ref, imagestest.BusyboxImage(t), remote.WithAuth(auth))
	s := newStore(t, Config{})
	if _, err := pullWait(t, s, ref); !errdefs.IsUnauthorized(err) {
		t.Fatalf("anonymous pull: %v, want ErrUnauthorized", err)
	}
	if _, err := s.Pull(ref, PullOptions{Auth: auth}); err != nil {
		t.Fatal(err)
	}
	img, err := s.Wait(context.Background(), ref)
	if err != nil || img.Status != StatusReady {
		t.Fatalf("pull with basic auth: %+v, %v", img, err)
	}
}

func TestEnsure(t *testing.T) {
	reg := imagestest.StartRegistry(t)
	ref := reg + "/test/bb:v1"
	digest := imagestest.PushImage(t, ref, imagestest.BusyboxImage(t))
	s := newStore(t, Config{})
	ctx := context.Background()
	img, err := s.Ensure(ctx, ref, PullOptions{})
	if err != nil || img.Digest != digest || img.Status != StatusReady {
		t.Fatalf("Ensure = %+v, %v", img, err)
	}
	// Present now: returned from disk without a new pull.
	img2, err := s.Ensure(ctx, ref, PullOptions{})
	if err != nil || img2.Digest != digest {
		t.Fatalf("second Ensure = %+v, %v", img2, err)
	}
	if _, err := s.Ensure(ctx, reg+"/test/bb:nope", PullOptions{}); !errdefs.IsNotFound(err) {
		t.Fatalf("Ensure of a missing tag = %v", err)
	}
	// By digest: the same image under a second, digest-pinned name.
	byDigest := reg + "/test/bb@" + digest
	img3, err := s.Ensure(ctx, byDigest, PullOptions{})
	if err != nil || img3.Digest != digest || img3.Name != byDigest {
		t.Fatalf("Ensure by digest = %+v, %v", img3, err)
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, i := range list {
		got = append(got, i.Name+" "+string(i.Status))
	}
	want := []string{reg + "/test/bb:nope failed", reg + "/test/bb:v1 ready", byDigest + " ready"}
	sort.Strings(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("List = %q, want %q", got, want)
	}
	if n := len(dirNames(t, filepath.Join(s.root, "blobs", "sha256"))); n != 1 {
		t.Errorf("%d image directories for one digest", n)
	}
}

func TestImport(t *testing.T) {
	src := imagestest.BusyboxImage(t)
	digest, _ := src.Digest()
	dir := t.TempDir()
	layoutDir := filepath.Join(dir, "layout")
	p, err := layout.Write(layoutDir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(src, layout.WithAnnotations(map[string]string{refNameAnnotation: "example.com/bb:oci"})); err != nil {
		t.Fatal(err)
	}
	ociTar := filepath.Join(dir, "oci.tar")
	tarDir(t, layoutDir, ociTar)
	dockerTar := filepath.Join(dir, "docker.tar")
	tag, _ := name.NewTag("example.com/bb:saved")
	if err := tarball.WriteToFile(dockerTar, tag, src); err != nil {
		t.Fatal(err)
	}
	rawTar := filepath.Join(dir, "docker-raw.tar")
	writeRawDockerSave(t, rawTar, "example.com/bb:raw")
	cases := []struct {
		name, path, as, want string
	}{
		{"docker save, uncompressed layers", rawTar, "", "example.com/bb:raw"},
		{"oci layout dir", layoutDir, "", "example.com/bb:oci"},
		{"oci archive", ociTar, "local/bb:renamed", "docker.io/local/bb:renamed"},
		{"docker save", dockerTar, "", "example.com/bb:saved"},
	}
	s := newStore(t, Config{})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			img, err := s.Import(context.Background(), tc.path, tc.as)
			if err != nil {
				t.Fatal(err)
			}
			if img.Name != tc.want || img.Status != StatusReady || !equalStrings(img.Entrypoint, []string{"/bin/sh"}) {
				t.Errorf("imported %+v", img)
			}
			if !strings.HasPrefix(tc.name, "docker save") && img.Digest != digest.String() {
				t.Errorf("digest %s, want %s", img.Digest, digest)
			}
			disk, err := s.RootDisk(img.Digest)
			if err != nil {
				t.Fatal(err)
			}
			mnt := mountRO(t, disk, FormatExt4)
			if target, err := os.Readlink(filepath.Join(mnt, "bin/sh")); err != nil || target != "busybox" {
				t.Errorf("bin/sh -> %q, %v", target, err)
			}
		})
	}
	if names := dirNames(t, filepath.Join(s.root, "tmp")); len(names) != 0 {
		t.Errorf("staging left after imports: %v", names)
	}
	if _, err := s.Import(context.Background(), filepath.Join(dir, "nope"), "x"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("import of a missing file: %v", err)
	}
	// An OCI layout whose image carries no full reference needs a name.
	bareDir := filepath.Join(dir, "bare")
	bp, err := layout.Write(bareDir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := bp.AppendImage(src, layout.WithAnnotations(map[string]string{refNameAnnotation: "latest"})); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(context.Background(), bareDir, ""); !errdefs.IsInvalidArgument(err) {
		t.Errorf("import without a name: %v, want ErrInvalidArgument", err)
	}
}

func equalStrings(a, b []string) bool { return strings.Join(a, "\x00") == strings.Join(b, "\x00") }

// tarDir packs dir's regular files and directories into out.
func tarDir(t testing.TB, dir, out string) {
	t.Helper()
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		h, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		h.Name, _ = filepath.Rel(dir, p)
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			_, err = io.Copy(tw, in)
			return err
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestQueuePositions(t *testing.T) {
	q := newQueue(1)
	ctx := context.Background()
	rel1, err := q.acquire(ctx, func(*ticket) { t.Error("first acquire queued") })
	if err != nil {
		t.Fatal(err)
	}
	type waiter struct {
		tk       atomic.Pointer[ticket]
		admitted chan func()
	}
	start := func(ctx context.Context) *waiter {
		w := &waiter{admitted: make(chan func(), 1)}
		queued := make(chan struct{})
		go func() {
			rel, err := q.acquire(ctx, func(tk *ticket) {
				if tk != nil {
					w.tk.Store(tk)
					close(queued)
				}
			})
			if err == nil {
				w.admitted <- rel
			} else {
				close(w.admitted)
			}
		}()
		<-queued
		return w
	}
	w2 := start(ctx)
	cctx, cancel := context.WithCancel(ctx)
	w3 := start(cctx)
	w4 := start(ctx)
	if p2, p3, p4 := q.position(w2.tk.Load()), q.position(w3.tk.Load()), q.position(w4.tk.Load()); p2 != 1 || p3 != 2 || p4 != 3 {
		t.Fatalf("positions %d %d %d, want 1 2 3", p2, p3, p4)
	}
	cancel() // w3 leaves the line
	if _, ok := <-w3.admitted; ok {
		t.Fatal("cancelled waiter admitted")
	}
	if p := q.position(w4.tk.Load()); p != 2 {
		t.Fatalf("w4 position after w3 left: %d, want 2", p)
	}
	rel1()
	rel2 := <-w2.admitted
	if p := q.position(w4.tk.Load()); p != 1 {
		t.Fatalf("w4 position: %d, want 1", p)
	}
	rel2()
	select {
	case rel4 := <-w4.admitted:
		rel4()
	case <-time.After(5 * time.Second):
		t.Fatal("w4 never admitted")
	}
	if q.running != 0 || len(q.waiting) != 0 {
		t.Fatalf("queue not drained: running %d waiting %d", q.running, len(q.waiting))
	}
}

func TestParseRef(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"busybox", "docker.io/library/busybox:latest"},
		{"docker.io/library/python:3.12", "docker.io/library/python:3.12"},
		{"ghcr.io/o/r", "ghcr.io/o/r:latest"},
		{"127.0.0.1:5000/a/b:t", "127.0.0.1:5000/a/b:t"},
		{"localhost:5000/a@sha256:" + strings.Repeat("a", 64), "localhost:5000/a@sha256:" + strings.Repeat("a", 64)},
	} {
		got, err := ParseRef(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseRef(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if _, err := ParseRef("UPPER/case:x"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("bad ref: %v", err)
	}
	for _, tc := range []struct {
		reg      string
		insecure []string
		want     bool
	}{
		{"127.0.0.1:5000", nil, true}, {"127.9.9.9", nil, true}, {"localhost:1", nil, true}, {"[::1]:5000", nil, true},
		{"index.docker.io", nil, false}, {"reg.lan:5000", []string{"reg.lan:5000"}, true},
		{"reg.lan:5000", []string{"reg.lan"}, true}, {"reg.lan:5000", []string{"other"}, false},
	} {
		if got := allowPlainHTTP(tc.reg, tc.insecure); got != tc.want {
			t.Errorf("allowPlainHTTP(%q, %v) = %v", tc.reg, tc.insecure, got)
		}
	}
}

// TestStaticGoImage pulls the static Go program image and runs the binary
// straight from the read-only root disk.
func TestStaticGoImage(t *testing.T) {
	reg := imagestest.StartRegistry(t)
	ref := reg + "/test/goapp:v1"
	imagestest.PushImage(t, ref, imagestest.StaticGoImage(t, "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello from the image\") }\n"))
	s := newStore(t, Config{})
	img, err := pullWait(t, s, ref)
	if err != nil {
		t.Fatal(err)
	}
	if !equalStrings(img.Entrypoint, []string{"/app"}) {
		t.Errorf("entrypoint %q", img.Entrypoint)
	}
	disk, _ := s.RootDisk(img.Digest)
	mnt := mountRO(t, disk, FormatExt4)
	out, err := exec.Command(filepath.Join(mnt, "app")).Output()
	if err != nil || string(out) != "hello from the image\n" {
		t.Fatalf("run /app: %q, %v", out, err)
	}
}

// TestDebianPython pulls the real distribution image and runs python3
// from its root disk (chroot into the read-only mount).
func TestDebianPython(t *testing.T) {
	if testing.Short() {
		t.Skip("pushes the Debian image")
	}
	reg := imagestest.StartRegistry(t)
	ref := reg + "/test/debian:python3"
	imagestest.PushImage(t, ref, imagestest.DebianPython(t))
	s := newStore(t, Config{})
	img, err := pullWait(t, s, ref)
	if err != nil {
		t.Fatal(err)
	}
	if !equalStrings(img.Cmd, []string{"/usr/bin/python3"}) {
		t.Errorf("cmd %q", img.Cmd)
	}
	disk, _ := s.RootDisk(img.Digest)
	mnt := mountRO(t, disk, FormatExt4)
	out, err := exec.Command("chroot", mnt, "/usr/bin/python3", "-B", "-c",
		"import os, sys; print(sys.version_info[:2] >= (3, 11), os.stat('/usr/bin/passwd').st_mode & 0o4000 != 0)").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "True True" {
		t.Fatalf("python3 in the image: %q, %v", out, err)
	}
}

// TestJoinRunningPull: a second pull of a running name joins it with the
// same credentials and is refused (ErrConflict) with others, as hypeman
// does; once the first has failed, a new pull starts.
func TestJoinRunningPull(t *testing.T) {
	s := newStore(t, Config{})
	release := make(chan struct{})
	blocked := func(ctx context.Context) (v1.Image, error) {
		<-release
		return nil, errors.New("source gone")
	}
	alice, err := credentialKey(&authn.Basic{Username: "alice", Password: "a"})
	if err != nil {
		t.Fatal(err)
	}
	bob, _ := credentialKey(&authn.Basic{Username: "bob", Password: "b"})
	n := "127.0.0.1:1/x/y:z"
	_, j1, err := s.start(n, alice, blocked, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, j2, err := s.start(n, alice, blocked, PullOptions{})
	if err != nil || j2 != j1 {
		t.Fatalf("same credentials: job %p vs %p, %v", j2, j1, err)
	}
	if _, _, err := s.start(n, bob, blocked, PullOptions{}); !errdefs.IsConflict(err) {
		t.Fatalf("other credentials: %v, want ErrConflict", err)
	}
	lp, err := layout.Write(t.TempDir(), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(imagestest.BusyboxImage(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(context.Background(), string(lp), n); !errdefs.IsConflict(err) {
		t.Fatalf("import onto a running pull: %v, want ErrConflict", err)
	}
	if err := s.Delete(context.Background(), n); !errdefs.IsConflict(err) {
		t.Fatalf("Delete during a pull: %v, want ErrConflict", err)
	}
	close(release)
	if _, err := s.Wait(context.Background(), n); err == nil || !strings.Contains(err.Error(), "source gone") {
		t.Fatalf("Wait = %v", err)
	}
	_, j3, err := s.start(n, bob, func(context.Context) (v1.Image, error) { return nil, errors.New("again") }, PullOptions{})
	if err != nil || j3 == j1 {
		t.Fatalf("after failure: %v (new job %v)", err, j3 != j1)
	}
	<-j3.done
}

// writeRawDockerSave writes what `docker save` writes: manifest.json, the
// config, and uncompressed layer tars, for a busybox-like image.
func writeRawDockerSave(t *testing.T, out, tag string) {
	t.Helper()
	bb, err := os.ReadFile(imagestest.BusyboxPath)
	if err != nil {
		t.Skip("needs busybox-static")
	}
	layer := imagestest.TarBytes(t, []imagestest.Entry{
		{Name: "bin/", Type: tar.TypeDir},
		{Name: "bin/busybox", Mode: 0o755, Body: bb},
		{Name: "bin/sh", Type: tar.TypeSymlink, Linkname: "busybox"},
	})
	diffID, _, err := v1.SHA256(bytes.NewReader(layer))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := json.Marshal(v1.ConfigFile{
		Architecture: "amd64", OS: "linux",
		Config: v1.Config{Entrypoint: []string{"/bin/sh"}},
		RootFS: v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{diffID}},
	})
	if err != nil {
		t.Fatal(err)
	}
	manifest, _ := json.Marshal([]map[string]any{{"Config": "config.json", "RepoTags": []string{tag}, "Layers": []string{"l1/layer.tar"}}})
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, e := range []struct {
		name string
		body []byte
	}{{"config.json", cfg}, {"l1/layer.tar", layer}, {"manifest.json", manifest}} {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(e.body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}
