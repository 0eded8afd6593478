package imagestest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// DefaultCacheDir is zygote's cache directory unless ZYGOTE_CACHE_DIR is
// set (the same rule as guest.CacheDir).
const DefaultCacheDir = "/var/cache/zygote"

// DebianSuite and DebianPackages define the cached distribution image.
const DebianSuite = "bookworm"

var DebianPackages = []string{"python3"}

// debianMu serialises the build inside one test binary; the rename makes
// concurrent binaries safe (the loser's build is discarded).
var debianMu sync.Mutex

// DebianPythonTar returns the path of a cached root filesystem tarball of
// Debian bookworm (variant minbase) plus python3, built by mmdebstrap from
// the machine's apt sources the first time (a few minutes) and cached as
// <cache>/images/debian-bookworm-minbase-python3.tar. The build writes to
// a temporary name in the same directory and renames it into place, so a
// killed build never leaves a broken cache entry.
func DebianPythonTar(t testing.TB) string {
	t.Helper()
	cache := os.Getenv("ZYGOTE_CACHE_DIR")
	if cache == "" {
		cache = DefaultCacheDir
	}
	dir := filepath.Join(cache, "images")
	final := filepath.Join(dir, "debian-"+DebianSuite+"-minbase-python3.tar")
	debianMu.Lock()
	defer debianMu.Unlock()
	if _, err := os.Stat(final); err == nil {
		return final
	}
	if _, err := exec.LookPath("mmdebstrap"); err != nil || os.Geteuid() != 0 {
		skipOrFail(t, "the Debian image needs root and mmdebstrap (apt-get install mmdebstrap)")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".debian-%d-%d.tar", os.Getpid(), time.Now().UnixNano()))
	defer os.Remove(tmp)
	args := []string{"--variant=minbase", "--include=" + joinComma(DebianPackages), "--mode=root",
		"--format=tar", "--quiet", DebianSuite, tmp}
	if _, err := os.Stat("/etc/apt/sources.list.d/debian.sources"); err == nil {
		args = append(args, "/etc/apt/sources.list.d/debian.sources")
	}
	start := time.Now()
	out, err := exec.Command("mmdebstrap", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("mmdebstrap %v: %v\n%s", args, err, tail(string(out), 4000))
	}
	if err := os.Rename(tmp, final); err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s in %s", final, time.Since(start).Round(time.Second))
	return final
}

// DebianPython returns the cached Debian bookworm minbase + python3 root
// filesystem as a one-layer image with cmd ["/usr/bin/python3"].
func DebianPython(t testing.TB) v1.Image {
	t.Helper()
	path := DebianPythonTar(t)
	layer, err := tarball.LayerFromFile(path, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	return Image(t, v1.Config{
		Cmd: []string{"/usr/bin/python3"},
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	}, layer)
}

func joinComma(s []string) string {
	out := ""
	for i, p := range s {
		if i > 0 {
			out += ","
		}
		out += p
	}
	return out
}
