package api_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/images"
	"github.com/zygote/zygote/images/imagestest"
	"github.com/zygote/zygote/instances/instancestest"
	"github.com/zygote/zygote/internal/testutil"
)

func init() {
	// Imported archives are opaque bytes to the checker.
	openapi3filter.RegisterBodyDecoder("application/x-tar", openapi3filter.FileBodyDecoder)
}

type imageEnv struct {
	env
	store *images.Store
}

// newImageEnv serves a real image store (ext4 root disks in a temp dir)
// beside the fake-driver manager, behind the spec checker.
func newImageEnv(t *testing.T, maxImport int64) *imageEnv {
	t.Helper()
	testutil.RequirePrivileged(t, "converting images (owners, xattrs, mkfs.ext4)", "mkfs.ext4")
	h := instancestest.New(t, "", instancestest.Clone)
	dir := t.TempDir()
	st, err := images.Open(images.Config{Root: filepath.Join(dir, "images")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv := api.NewServer(api.ServerConfig{Manager: h.M, Images: st, UploadDir: filepath.Join(dir, "uploads"), MaxImportBytes: maxImport})
	ts := httptest.NewServer(newSpecChecker(t).wrap(srv.Handler()))
	t.Cleanup(ts.Close)
	c, err := client.New(ts.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	return &imageEnv{env: env{h: h, c: c, url: ts.URL}, store: st}
}

// waitImage polls GET /images/{ref} until the pull ends.
func (e *imageEnv) waitImage(t *testing.T, ref string) api.Image {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		img, err := e.c.GetImage(ctx, ref)
		if err != nil {
			t.Fatalf("get image %s: %v", ref, err)
		}
		if img.Status == "ready" || img.Status == "failed" {
			return img
		}
		if time.Now().After(deadline) {
			t.Fatalf("image %s still %s", ref, img.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestImagePullGetListDelete(t *testing.T) {
	e := newImageEnv(t, 0)
	reg := imagestest.StartRegistry(t)
	ref := reg + "/tools/busybox:v1"
	digest := imagestest.PushImage(t, ref, imagestest.BusyboxImage(t))

	img, err := e.c.PullImage(ctx, api.PullImageRequest{Name: ref, Platform: "linux/amd64"})
	if err != nil {
		t.Fatal(err)
	}
	if img.Name != ref || img.Status == "ready" || img.Status == "failed" {
		t.Fatalf("pull answered %+v; want a pending pull of %s", img, ref)
	}
	img = e.waitImage(t, ref)
	if img.Status != "ready" || img.Digest != digest || img.SizeBytes == nil || *img.SizeBytes <= 0 ||
		img.Format != "ext4" || img.Platform != "linux/amd64" || img.Error != nil || img.Progress != nil {
		t.Fatalf("ready image = %+v", img)
	}
	if strings.Join(img.Entrypoint, " ") != "/bin/sh" || img.Env["PATH"] != "/bin" || img.WorkingDir == nil || *img.WorkingDir != "/" {
		t.Fatalf("image config = entrypoint %q env %v working_dir %v", img.Entrypoint, img.Env, img.WorkingDir)
	}
	// The same image by digest, and in the list.
	byDigest, err := e.c.GetImage(ctx, digest)
	if err != nil || byDigest.Name != ref {
		t.Fatalf("get by digest: %+v %v", byDigest, err)
	}
	list, err := e.c.ListImages(ctx)
	if err != nil || len(list) != 1 || list[0].Name != ref || list[0].Digest != digest {
		t.Fatalf("list: %+v %v", list, err)
	}
	// The raw path: the name URL-escaped, as hypeman's CLI sends it.
	resp, body := rawDo(t, "GET", e.url+"/images/"+url.PathEscape(ref), "", nil)
	if resp.StatusCode != 200 || !strings.Contains(body, `"status":"ready"`) {
		t.Fatalf("GET escaped name: %d %s", resp.StatusCode, body)
	}
	// Pulling a ready name again re-resolves it and ends ready.
	if _, err := e.c.PullImage(ctx, api.PullImageRequest{Name: ref}); err != nil {
		t.Fatal(err)
	}
	if img := e.waitImage(t, ref); img.Status != "ready" || img.Digest != digest {
		t.Fatalf("second pull: %+v", img)
	}

	if err := e.c.DeleteImage(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.GetImage(ctx, ref); !errdefs.IsNotFound(err) {
		t.Fatalf("get after delete: %v", err)
	}
	if err := e.c.DeleteImage(ctx, ref); !errdefs.IsNotFound(err) {
		t.Fatalf("delete unknown: %v, want 404", err)
	}
	if _, err := e.c.GetImage(ctx, digest); !errdefs.IsNotFound(err) {
		t.Fatalf("get unknown digest: %v, want 404", err)
	}
	if err := e.c.DeleteImage(ctx, digest); !errdefs.IsNotFound(err) {
		t.Fatalf("delete unknown digest: %v, want 404", err)
	}
	if list, err := e.c.ListImages(ctx); err != nil || len(list) != 0 {
		t.Fatalf("list after delete: %+v %v", list, err)
	}
}

// statusCode reads an API error's status and code.
func statusCode(t *testing.T, err error) (int, string) {
	t.Helper()
	se, ok := err.(*api.StatusError)
	if !ok {
		t.Fatalf("error %v (%T) is not an API error", err, err)
	}
	return se.Status, se.Body.Code
}

func TestImagePullFailures(t *testing.T) {
	e := newImageEnv(t, 0)
	reg := imagestest.NewRegistry(t, imagestest.RegistryOptions{User: "alice", Password: "wonderland"})
	ref := reg.Addr + "/private/busybox:v1"
	imagestest.PushImage(t, ref, imagestest.BusyboxImage(t),
		remote.WithAuth(&authn.Basic{Username: "alice", Password: "wonderland"}))

	t.Run("bad reference", func(t *testing.T) {
		for _, bad := range []string{"UPPER/case", "a b", "repo@sha256:short"} {
			_, err := e.c.PullImage(ctx, api.PullImageRequest{Name: bad})
			if st, code := statusCode(t, err); st != 400 || code != "invalid_name" {
				t.Errorf("pull %q: %d %s, want 400 invalid_name", bad, st, code)
			}
			_, err = e.c.GetImage(ctx, bad)
			if st, code := statusCode(t, err); st != 400 || code != "invalid_name" {
				t.Errorf("get %q: %d %s, want 400 invalid_name", bad, st, code)
			}
			err = e.c.DeleteImage(ctx, bad)
			if st, code := statusCode(t, err); st != 400 || code != "invalid_name" {
				t.Errorf("delete %q: %d %s, want 400 invalid_name", bad, st, code)
			}
		}
		_, err := e.c.PullImage(ctx, api.PullImageRequest{})
		if st, code := statusCode(t, err); st != 400 || code != "invalid_name" {
			t.Errorf("pull without a name: %d %s", st, code)
		}
	})
	t.Run("fields", func(t *testing.T) {
		resp, body := rawDo(t, "POST", e.url+"/images", `{"name":"`+ref+`","tags":{"a":"b"}}`, nil)
		if resp.StatusCode != 501 || !strings.Contains(body, "not_supported") || !strings.Contains(body, "tags") {
			t.Errorf("tags: %d %s", resp.StatusCode, body)
		}
		resp, body = rawDo(t, "POST", e.url+"/images", `{"name":"`+ref+`","bogus":1}`, nil)
		if resp.StatusCode != 400 || !strings.Contains(body, "invalid_request") {
			t.Errorf("unknown field: %d %s", resp.StatusCode, body)
		}
		_, err := e.c.PullImage(ctx, api.PullImageRequest{Name: ref, Platform: "linux/arm64"})
		if st, code := statusCode(t, err); st != 404 || code != "platform_not_available" {
			t.Errorf("foreign platform: %d %s", st, code)
		}
	})
	t.Run("missing tag", func(t *testing.T) {
		missing := reg.Addr + "/private/busybox:nope"
		if _, err := e.c.PullImage(ctx, api.PullImageRequest{Name: missing,
			Credentials: &api.ImageCredentials{Username: "alice", Password: "wonderland"}}); err != nil {
			t.Fatal(err)
		}
		img := e.waitImage(t, missing)
		t.Logf("missing tag: error %q", deref(img.Error))
		if img.Status != "failed" || img.Error == nil || !strings.Contains(*img.Error, "MANIFEST_UNKNOWN") {
			t.Fatalf("missing tag: %+v (error %v); want failed with the registry's message", img, deref(img.Error))
		}
		// A failed pull is listed, and deleting it forgets it.
		if list, _ := e.c.ListImages(ctx); len(list) != 1 || list[0].Status != "failed" {
			t.Errorf("list: %+v", list)
		}
		if err := e.c.DeleteImage(ctx, missing); err != nil {
			t.Fatal(err)
		}
		if _, err := e.c.GetImage(ctx, missing); !errdefs.IsNotFound(err) {
			t.Fatalf("failed pull after delete: %v", err)
		}
	})
	t.Run("unauthorized", func(t *testing.T) {
		if _, err := e.c.PullImage(ctx, api.PullImageRequest{Name: ref}); err != nil {
			t.Fatal(err)
		}
		img := e.waitImage(t, ref)
		if img.Status != "failed" || img.Error == nil || !strings.Contains(strings.ToLower(*img.Error), "unauthorized") {
			t.Fatalf("anonymous pull of a private image: %+v (error %v)", img, deref(img.Error))
		}
		if _, err := e.c.PullImage(ctx, api.PullImageRequest{Name: ref,
			Credentials: &api.ImageCredentials{Username: "alice", Password: "wrong"}}); err != nil {
			t.Fatal(err)
		}
		if img := e.waitImage(t, ref); img.Status != "failed" || !strings.Contains(strings.ToLower(deref(img.Error)), "unauthorized") {
			t.Fatalf("wrong password: %+v (error %v)", img, deref(img.Error))
		}
		if _, err := e.c.PullImage(ctx, api.PullImageRequest{Name: ref,
			Credentials: &api.ImageCredentials{Username: "alice", Password: "wonderland"}}); err != nil {
			t.Fatal(err)
		}
		if img := e.waitImage(t, ref); img.Status != "ready" {
			t.Fatalf("with credentials: %+v (error %v)", img, deref(img.Error))
		}
	})
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// A pull held at its first blob: it cannot be deleted (409), a second
// pull of it with other credentials is 409, the same pull joins it; once
// released it ends ready and can be deleted.
func TestImageDeleteWhilePulling(t *testing.T) {
	e := newImageEnv(t, 0)
	reg := imagestest.StartRegistry(t)
	bb := imagestest.BusyboxImage(t)
	imagestest.PushImage(t, reg+"/held/busybox:v1", bb)
	layers, err := bb.Layers()
	if err != nil {
		t.Fatal(err)
	}
	layer, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	proxy, release := imagestest.Gate(t, reg, layer.String())
	ref := proxy + "/held/busybox:v1"
	if _, err := e.c.PullImage(ctx, api.PullImageRequest{Name: ref}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		img, err := e.c.GetImage(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		if img.Status == "pulling" {
			if img.Progress == nil || img.Progress.LayersTotal != 1 || img.Progress.BytesTotal <= 0 || img.Progress.LayersDone != 0 {
				t.Fatalf("pulling image progress = %+v", img.Progress)
			}
			break
		}
		if img.Status != "pending" || time.Now().After(deadline) {
			t.Fatalf("held pull: %+v", img)
		}
		time.Sleep(20 * time.Millisecond)
	}
	err = e.c.DeleteImage(ctx, ref)
	if st, code := statusCode(t, err); st != 409 || code != "conflict" {
		t.Fatalf("delete while pulling: %d %s (%v), want 409 conflict", st, code, err)
	}
	_, err = e.c.PullImage(ctx, api.PullImageRequest{Name: ref, Credentials: &api.ImageCredentials{Username: "u", Password: "p"}})
	if st, code := statusCode(t, err); st != 409 || code != "conflict" {
		t.Fatalf("joining with other credentials: %d %s (%v), want 409 conflict", st, code, err)
	}
	if img, err := e.c.PullImage(ctx, api.PullImageRequest{Name: ref}); err != nil || img.Status != "pulling" {
		t.Fatalf("joining the running pull: %+v %v", img, err)
	}
	release()
	if img := e.waitImage(t, ref); img.Status != "ready" {
		t.Fatalf("released pull: %+v", img)
	}
	if err := e.c.DeleteImage(ctx, ref); err != nil {
		t.Fatal(err)
	}
}

// dockerSave writes img as `docker save` does (tarball.Write) under tag.
func dockerSave(t *testing.T, tag string) []byte {
	t.Helper()
	r, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tarball.Write(r, imagestest.BusyboxImage(t), &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestImageImport(t *testing.T) {
	archive := dockerSave(t, "example.com/saved/busybox:v2")
	e := newImageEnv(t, int64(len(archive))+10)

	img, err := e.c.ImportImage(ctx, bytes.NewReader(archive), "")
	if err != nil {
		t.Fatal(err)
	}
	if img.Name != "example.com/saved/busybox:v2" || img.Status != "ready" || img.SizeBytes == nil {
		t.Fatalf("import (recorded name) = %+v", img)
	}
	img, err = e.c.ImportImage(ctx, bytes.NewReader(archive), "mine")
	if err != nil || img.Name != "docker.io/library/mine:latest" || img.Status != "ready" {
		t.Fatalf("import --name mine = %+v %v", img, err)
	}
	if got, err := e.c.GetImage(ctx, "mine"); err != nil || got.Digest != img.Digest {
		t.Fatalf("get short name: %+v %v", got, err)
	}

	t.Run("refused", func(t *testing.T) {
		_, err := e.c.ImportImage(ctx, strings.NewReader("not a tar at all"), "x")
		if st, code := statusCode(t, err); st != 400 || code != "invalid_request" {
			t.Errorf("garbage: %d %s (%v)", st, code, err)
		}
		_, err = e.c.ImportImage(ctx, bytes.NewReader(archive), "Bad Name")
		if st, code := statusCode(t, err); st != 400 || code != "invalid_name" {
			t.Errorf("bad name: %d %s", st, code)
		}
		_, err = e.c.ImportImage(ctx, bytes.NewReader(nil), "x")
		if st, code := statusCode(t, err); st != 400 {
			t.Errorf("empty body: %d %s", st, code)
		}
		big := append(append([]byte{}, archive...), make([]byte, 64)...)
		_, err = e.c.ImportImage(ctx, bytes.NewReader(big), "x") // Content-Length declared
		if st, code := statusCode(t, err); st != 413 || code != "payload_too_large" {
			t.Errorf("declared too large: %d %s", st, code)
		}
		_, err = e.c.ImportImage(ctx, struct{ *bytes.Reader }{bytes.NewReader(big)}, "x") // chunked
		if st, code := statusCode(t, err); st != 413 || code != "payload_too_large" {
			t.Errorf("chunked too large: %d %s", st, code)
		}
		resp, body := rawDo(t, "POST", e.url+"/images/import", "{}", nil)
		if resp.StatusCode != 400 || !strings.Contains(body, "application/x-tar") {
			t.Errorf("JSON body: %d %s", resp.StatusCode, body)
		}
	})
	if list, err := e.c.ListImages(ctx); err != nil || len(list) != 2 {
		t.Fatalf("list after refused imports: %+v %v", list, err)
	}
}

// Without an image store every image route is 501 not_supported.
func TestImagesWithoutStore(t *testing.T) {
	e := newEnv(t)
	for _, call := range []func() error{
		func() error { _, err := e.c.ListImages(ctx); return err },
		func() error { _, err := e.c.PullImage(ctx, api.PullImageRequest{Name: "busybox"}); return err },
		func() error { _, err := e.c.GetImage(ctx, "busybox"); return err },
		func() error { return e.c.DeleteImage(ctx, "busybox") },
		func() error { _, err := e.c.ImportImage(ctx, strings.NewReader("x"), ""); return err },
	} {
		if err := call(); !errdefs.IsNotImplemented(err) {
			t.Errorf("without a store: %v, want 501", err)
		}
	}
	resp, _ := rawDo(t, "PUT", e.url+"/images", "", nil)
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("PUT /images: %d", resp.StatusCode)
	}
}
