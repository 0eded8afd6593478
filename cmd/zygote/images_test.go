package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/images"
	"github.com/zygote/zygote/images/imagestest"
	"github.com/zygote/zygote/instances/instancestest"
	"github.com/zygote/zygote/internal/testutil"
)

// imageDaemon serves the API with a real image store (and the fake-driver
// manager) over HTTP; the CLI reaches it through ZYGOTE_ENDPOINT.
type imageDaemon struct {
	url string
	c   *client.Client
}

func newImageDaemon(t *testing.T) *imageDaemon {
	t.Helper()
	testutil.RequirePrivileged(t, "converting images (owners, xattrs, mkfs.ext4)", "mkfs.ext4")
	h := instancestest.New(t, "", instancestest.Clone)
	dir := t.TempDir()
	st, err := images.Open(images.Config{Root: filepath.Join(dir, "images")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ts := httptest.NewServer(api.NewServer(api.ServerConfig{Manager: h.M, Images: st, UploadDir: filepath.Join(dir, "uploads")}).Handler())
	t.Cleanup(ts.Close)
	c, _ := client.New(ts.URL, "")
	return &imageDaemon{url: ts.URL, c: c}
}

// cli builds `zygote args...` (this test binary playing the CLI).
func (d *imageDaemon) cli(args ...string) *exec.Cmd {
	self, _ := os.Executable()
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), "ZYGOTE_TEST_CLI=1", "ZYGOTE_ENDPOINT="+d.url)
	return cmd
}

// run runs the CLI with stdin and returns stdout, stderr and its error.
func (d *imageDaemon) run(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	cmd := d.cli(args...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// heldBusybox pushes busybox to a fresh registry and returns its name
// behind a proxy that holds its layer until release.
func heldBusybox(t *testing.T) (ref, digest string, release func()) {
	t.Helper()
	reg := imagestest.StartRegistry(t)
	bb := imagestest.BusyboxImage(t)
	digest = imagestest.PushImage(t, reg+"/cli/busybox:v1", bb)
	layers, err := bb.Layers()
	if err != nil {
		t.Fatal(err)
	}
	ld, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	proxy, release := imagestest.Gate(t, reg, ld.String())
	return proxy + "/cli/busybox:v1", digest, release
}

// waitPulling waits until the daemon says ref is pulling.
func (d *imageDaemon) waitPulling(t *testing.T, ref string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		img, err := d.c.GetImage(context.Background(), ref)
		if err == nil && img.Status == "pulling" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never pulling: %+v %v", ref, img, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Not on a terminal, pull prints one plain line per step on stderr (no
// carriage returns, no escapes) and the result on stdout.
func TestPullPlainLines(t *testing.T) {
	d := newImageDaemon(t)
	ref, digest, release := heldBusybox(t)
	cmd := d.cli("pull", ref)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	d.waitPulling(t, ref)
	time.Sleep(3 * pollInterval) // the CLI sees the held state
	release()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("zygote pull: %v\nstderr: %s", err, errb.String())
	}
	stderr := errb.String()
	if strings.ContainsAny(stderr, "\r\033") {
		t.Errorf("plain output has terminal control characters: %q", stderr)
	}
	for _, want := range []string{ref + ": pulling, layers 0/1, 0 B of ", ref + ": ready, "} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if lines := strings.Count(stderr, "\n"); lines > 8 {
		t.Errorf("%d lines for one small pull; one per step expected:\n%s", lines, stderr)
	}
	if f := strings.Fields(out.String()); len(f) < 2 || f[0] != ref || f[1] != digest {
		t.Errorf("stdout = %q, want %s %s …", out.String(), ref, digest)
	}
}

// On a terminal, pull draws a progress bar in place (bytes and layers)
// and clears it before printing the result.
func TestPullProgressBarOnTTY(t *testing.T) {
	d := newImageDaemon(t)
	ref, digest, release := heldBusybox(t)
	master, slave, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	defer master.Close()
	defer slave.Close()
	pty.Setsize(master, &pty.Winsize{Rows: 24, Cols: 200})
	cmd := d.cli("pull", ref)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	out := &ptyOutput{}
	go io.Copy(out, master)
	d.waitPulling(t, ref)
	out.waitFor(t, "pulling    [>"+strings.Repeat(" ", barWidth-1)+"]   0%  0 B / ")
	out.waitFor(t, "layers 0/1")
	release()
	out.waitFor(t, digest)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("zygote pull: %v", err)
	}
	out.mu.Lock()
	got := out.b.String()
	out.mu.Unlock()
	if !strings.Contains(got, "\r\033[K"+ref+"  pulling") {
		t.Errorf("the bar is not redrawn in place: %q", got)
	}
	if !strings.Contains(got, "\r\033[K"+ref+"  "+digest) {
		t.Errorf("the bar is not cleared before the result: %q", got)
	}
}

// dockerSaveGz writes busybox as `docker save | gzip` would.
func dockerSaveGz(t *testing.T, tag string) string {
	t.Helper()
	r, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "busybox.tar.gz")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	zw := gzip.NewWriter(f)
	if err := tarball.Write(r, imagestest.BusyboxImage(t), zw); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// ociLayout writes busybox as an OCI layout directory whose index names
// it ref.
func ociLayout(t *testing.T, ref string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(imagestest.BusyboxImage(t), layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": ref})); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestImageVerbs(t *testing.T) {
	d := newImageDaemon(t)

	// import: a gzip'd docker save tar under a name; an OCI layout
	// directory under the name it records; stdin.
	stdout, stderr, err := d.run(t, "", "image", "import", dockerSaveGz(t, "example.com/saved/bb:v1"), "--name", "saved")
	if err != nil || !strings.HasPrefix(stdout, "docker.io/library/saved:latest  sha256:") {
		t.Fatalf("import tar.gz: %v %q %q", err, stdout, stderr)
	}
	stdout, stderr, err = d.run(t, "", "image", "import", ociLayout(t, "example.com/oci/bb:v3"))
	if err != nil || !strings.HasPrefix(stdout, "example.com/oci/bb:v3  sha256:") {
		t.Fatalf("import layout dir: %v %q %q", err, stdout, stderr)
	}
	archive, err := os.ReadFile(dockerSaveGz(t, "example.com/stdin/bb:v4"))
	if err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err = d.run(t, string(archive), "image", "import", "-", "--json")
	var imported api.Image
	if err != nil || json.Unmarshal([]byte(stdout), &imported) != nil || imported.Name != "example.com/stdin/bb:v4" || imported.Status != "ready" {
		t.Fatalf("import from stdin: %v %q %q", err, stdout, stderr)
	}
	if _, stderr, err = d.run(t, "", "image", "import", t.TempDir()); err == nil || !strings.Contains(stderr, "OCI layout") {
		t.Errorf("import of a plain directory: %v %q", err, stderr)
	}

	// pull with credentials from stdin.
	reg := imagestest.NewRegistry(t, imagestest.RegistryOptions{User: "bob", Password: "builder"})
	private := reg.Addr + "/private/bb:v1"
	imagestest.PushImage(t, private, imagestest.BusyboxImage(t), remote.WithAuth(&authn.Basic{Username: "bob", Password: "builder"}))
	if _, stderr, err = d.run(t, "", "pull", private); err == nil || !strings.Contains(stderr, "UNAUTHORIZED") {
		t.Errorf("anonymous pull of a private image: %v %q", err, stderr)
	}
	if stdout, stderr, err = d.run(t, "builder\n", "pull", "-u", "bob", "--password-stdin", private); err != nil || !strings.HasPrefix(stdout, private+"  sha256:") {
		t.Errorf("pull with credentials: %v %q %q", err, stdout, stderr)
	}
	if _, stderr, err = d.run(t, "", "pull", reg.Addr+"/private/bb:nope", "-u", "bob", "--password-stdin"); err == nil {
		t.Errorf("--password-stdin with an empty stdin succeeded: %q", stderr)
	}
	if _, stderr, err = d.run(t, "builder\n", "pull", reg.Addr+"/private/bb:nope", "-u", "bob", "--password-stdin"); err == nil ||
		!strings.Contains(stderr, "MANIFEST_UNKNOWN") {
		t.Errorf("pull of a missing tag: %v %q", err, stderr)
	}
	if _, stderr, err = d.run(t, "", "pull", "Not A Ref"); err == nil || !strings.Contains(stderr, "invalid") {
		t.Errorf("pull of a bad reference: %v %q", err, stderr)
	}

	// images lists them all (the failed pull too).
	stdout, _, err = d.run(t, "", "images")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		f := strings.Fields(line)
		rows[f[0]] = f[1:]
	}
	for name, status := range map[string]string{"NAME": "STATUS", "docker.io/library/saved:latest": "ready",
		"example.com/oci/bb:v3": "ready", private: "ready", reg.Addr + "/private/bb:nope": "failed"} {
		if len(rows[name]) < 4 || rows[name][0] != status {
			t.Errorf("zygote images: row %s = %q, want %s:\n%s", name, rows[name], status, stdout)
		}
	}
	stdout, _, _ = d.run(t, "", "image", "ls", "-q")
	if names := strings.Fields(stdout); len(names) != 5 {
		t.Errorf("image ls -q: %q", names)
	}

	// inspect by short name and by digest.
	stdout, _, err = d.run(t, "", "image", "inspect", "saved")
	var img api.Image
	if err != nil || json.Unmarshal([]byte(stdout), &img) != nil || img.Name != "docker.io/library/saved:latest" ||
		strings.Join(img.Entrypoint, " ") != "/bin/sh" || img.SizeBytes == nil {
		t.Fatalf("inspect: %v %q", err, stdout)
	}
	stdout, _, err = d.run(t, "", "image", "inspect", img.Digest)
	if err != nil || !strings.Contains(stdout, `"digest": "`+img.Digest) {
		t.Errorf("inspect by digest: %v %q", err, stdout)
	}

	// rm: several at once; an unknown one fails the command but not the rest.
	stdout, stderr, err = d.run(t, "", "image", "rm", "saved", "nosuch", "example.com/oci/bb:v3")
	if err == nil || !strings.Contains(stderr, "nosuch: ") || !strings.Contains(stderr, "not found") ||
		stdout != "saved\nexample.com/oci/bb:v3\n" {
		t.Errorf("rm: %v %q %q", err, stdout, stderr)
	}
	stdout, _, _ = d.run(t, "", "image", "ls", "-q")
	if strings.Contains(stdout, "saved") || strings.Contains(stdout, "oci/bb") {
		t.Errorf("removed images still listed: %q", stdout)
	}
	if _, stderr, err = d.run(t, "", "image", "inspect", "saved"); err == nil || !strings.Contains(stderr, "not found") {
		t.Errorf("inspect removed: %v %q", err, stderr)
	}
}

func TestProgressRendering(t *testing.T) {
	two, size := 2, int64(12<<20)
	for _, tc := range []struct {
		img       api.Image
		line, bar string
	}{
		{img: api.Image{Name: "a", Status: "pending", QueuePosition: &two, Progress: &api.ImageProgress{}},
			line: "a: pending, queue position 2", bar: "a  pending    [>                       ]   0%  0 B / 0 B  layers 0/0  queue 2"},
		{img: api.Image{Name: "a", Status: "pulling", Progress: &api.ImageProgress{LayersDone: 1, LayersTotal: 2, BytesDone: 3 << 20, BytesTotal: 4 << 20}},
			line: "a: pulling, layers 1/2, 3.0 MB of 4.0 MB", bar: "a  pulling    [==================>     ]  75%  3.0 MB / 4.0 MB  layers 1/2"},
		{img: api.Image{Name: "a", Status: "converting", Progress: &api.ImageProgress{LayersDone: 2, LayersTotal: 2, BytesDone: 4 << 20, BytesTotal: 4 << 20}},
			line: "a: converting", bar: "a  converting [========================] 100%  4.0 MB / 4.0 MB  layers 2/2"},
		{img: api.Image{Name: "a", Status: "ready", SizeBytes: &size},
			line: "a: ready, 12.0 MB", bar: "a  ready      [========================] 100%  0 B / 0 B  layers 0/0"},
	} {
		if got := progressLine(tc.img); got != tc.line {
			t.Errorf("progressLine(%s) = %q, want %q", tc.img.Status, got, tc.line)
		}
		if got := progressBar(tc.img); got != tc.bar {
			t.Errorf("progressBar(%s) = %q, want %q", tc.img.Status, got, tc.bar)
		}
	}
	// Plain lines come per layer, not per byte.
	a := api.Image{Status: "pulling", Progress: &api.ImageProgress{LayersDone: 1, LayersTotal: 2, BytesDone: 10}}
	b := api.Image{Status: "pulling", Progress: &api.ImageProgress{LayersDone: 1, LayersTotal: 2, BytesDone: 20}}
	c := api.Image{Status: "pulling", Progress: &api.ImageProgress{LayersDone: 2, LayersTotal: 2, BytesDone: 20}}
	if progressKey(a) != progressKey(b) || progressKey(b) == progressKey(c) {
		t.Errorf("progress keys: %q %q %q", progressKey(a), progressKey(b), progressKey(c))
	}
}
