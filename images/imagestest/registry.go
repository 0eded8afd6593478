package imagestest

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/zygote/zygote/internal/testutil"
)

// RegistryBinary is Debian's docker-registry (CNCF distribution 2.8).
const RegistryBinary = "/usr/bin/docker-registry"

// Registry is a running registry started by a test.
type Registry struct {
	// Addr is host:port on 127.0.0.1.
	Addr string
	// Storage is the registry's filesystem storage root: blobs live under
	// docker/registry/v2/blobs/sha256/<2>/<hex>/data.
	Storage string
}

// RegistryOptions configures NewRegistry.
type RegistryOptions struct {
	// User and Password, when User is set, turn on htpasswd basic auth.
	User, Password string
}

// StartRegistry starts an anonymous registry on a free 127.0.0.1 port with
// its own config and storage directory, and returns its host:port. The
// registry is stopped at t's cleanup.
func StartRegistry(t testing.TB) string {
	t.Helper()
	return NewRegistry(t, RegistryOptions{}).Addr
}

// NewRegistry is StartRegistry with options; it also returns the storage
// directory so tests can corrupt blobs.
func NewRegistry(t testing.TB, opts RegistryOptions) *Registry {
	t.Helper()
	if _, err := os.Stat(RegistryBinary); err != nil {
		skipOrFail(t, fmt.Sprintf("a local OCI registry needs %s (apt-get install docker-registry)", RegistryBinary))
	}
	dir := t.TempDir()
	storage := filepath.Join(dir, "storage")
	if err := os.Mkdir(storage, 0o755); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	auth := ""
	if opts.User != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(opts.Password), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(opts.User+":"+string(hash)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		auth = fmt.Sprintf("auth:\n  htpasswd:\n    realm: zygote-test\n    path: %s\n", htpasswd)
	}
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  cache:
    blobdescriptor: ""
http:
  addr: %s
%s`, storage, addr, auth)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(RegistryBinary, "serve", cfgPath)
	cmd.Stdout = &logs
	cmd.Stderr = &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", RegistryBinary, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("registry %s log:\n%s", addr, tail(logs.String(), 4000))
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			break
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("registry exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry on %s not ready after 10 s: %v\n%s", addr, err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &Registry{Addr: addr, Storage: storage}
}

// BlobPath returns the registry's data file for a blob digest
// ("sha256:<hex>").
func (r *Registry) BlobPath(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(r.Storage, "docker/registry/v2/blobs/sha256", hex[:2], hex, "data")
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func skipOrFail(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv(testutil.EnvRequirePrivileged) == "1" {
		t.Fatalf("%s (%s=1, so this is a failure, not a skip)", msg, testutil.EnvRequirePrivileged)
	}
	t.Skipf("skipping: %s (set %s=1 to make this a failure)", msg, testutil.EnvRequirePrivileged)
}
