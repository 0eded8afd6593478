package imagestest

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Entry is one tar entry of a test layer. Zero values mean a regular
// file, mode 0644, root-owned.
type Entry struct {
	Name     string
	Type     byte // tar.TypeReg (default), TypeDir, TypeSymlink, TypeLink, TypeChar, TypeFifo
	Mode     int64
	UID, GID int
	Linkname string
	Body     []byte
	// Xattrs are written as SCHILY.xattr.<key> PAX records.
	Xattrs map[string]string
	// Size, when set, overrides len(Body) in the header (for broken tars).
	Size int64
}

// TarBytes renders entries as an uncompressed tar stream.
func TarBytes(t testing.TB, entries []Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1700000000, 0)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Typeflag: e.Type, Mode: e.Mode, Uid: e.UID, Gid: e.GID,
			Linkname: e.Linkname, ModTime: mtime, Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if len(e.Xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.Xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %s: %v", e.Name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.Body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Layer builds a gzip-compressed layer from entries.
func Layer(t testing.TB, entries []Entry) v1.Layer {
	t.Helper()
	return LayerFromTar(t, TarBytes(t, entries))
}

// LayerFromTar builds a gzip-compressed OCI layer from an uncompressed tar.
func LayerFromTar(t testing.TB, tarball_ []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarball_)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Image stacks layers (bottom first) on an empty OCI image with cfg's
// entrypoint, cmd, env and working directory.
func Image(t testing.TB, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Config = cfg
	cf.OS, cf.Architecture = "linux", "amd64"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// PushImage pushes img to ref (on a registry from StartRegistry; plain
// http) and returns its manifest digest.
func PushImage(t testing.TB, ref string, img v1.Image, opts ...remote.Option) string {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, opts...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// BusyboxPath is the static busybox of Debian's busybox-static.
const BusyboxPath = "/bin/busybox"

// BusyboxApplets are linked to busybox in BusyboxImage's /bin.
var BusyboxApplets = []string{"sh", "ls", "cat", "echo", "mount", "sleep", "true", "false", "stat", "id"}

// BusyboxImage is a one-layer image with /bin/busybox (busybox-static),
// symlinks for BusyboxApplets, /etc/passwd and /tmp; its entrypoint is
// /bin/sh.
func BusyboxImage(t testing.TB) v1.Image {
	t.Helper()
	bb, err := os.ReadFile(BusyboxPath)
	if err != nil {
		skipOrFail(t, "a busybox image needs "+BusyboxPath+" (apt-get install busybox-static)")
	}
	entries := []Entry{
		{Name: "bin/", Type: tar.TypeDir},
		{Name: "bin/busybox", Mode: 0o755, Body: bb},
		{Name: "etc/", Type: tar.TypeDir},
		{Name: "etc/passwd", Body: []byte("root:x:0:0:root:/root:/bin/sh\n")},
		{Name: "root/", Type: tar.TypeDir, Mode: 0o700},
		{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
	}
	for _, a := range BusyboxApplets {
		entries = append(entries, Entry{Name: "bin/" + a, Type: tar.TypeSymlink, Linkname: "busybox"})
	}
	return Image(t, v1.Config{
		Entrypoint: []string{"/bin/sh"},
		Env:        []string{"PATH=/bin"},
		WorkingDir: "/",
	}, Layer(t, entries))
}

// StaticGoImage builds a static Go program from src (one main package
// file) with CGO_ENABLED=0 and returns a one-layer image holding it as
// /app with entrypoint ["/app"].
func StaticGoImage(t testing.TB, src string) v1.Image {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		skipOrFail(t, "a static Go image needs the go tool on PATH")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module app\n\ngo 1.22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", "app", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(filepath.Join(dir, "app"))
	if err != nil {
		t.Fatal(err)
	}
	return Image(t, v1.Config{Entrypoint: []string{"/app"}},
		Layer(t, []Entry{{Name: "app", Mode: 0o755, Body: bin}}))
}
