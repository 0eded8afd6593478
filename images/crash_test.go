package images

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/images/imagestest"
)

// Environment of the crash helper process.
const (
	envCrashRoot = "ZYGOTE_IMAGES_CRASH_ROOT"
	envCrashRef  = "ZYGOTE_IMAGES_CRASH_REF"
)

// TestCrashHelper is the daemon stand-in that TestReconcileAfterKill
// SIGKILLs: it opens the store and pulls one image. It does nothing
// unless started by that test.
func TestCrashHelper(t *testing.T) {
	root := os.Getenv(envCrashRoot)
	if root == "" {
		t.Skip("helper process for TestReconcileAfterKill")
	}
	s, err := Open(Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pullWait(t, s, os.Getenv(envCrashRef)); err != nil {
		t.Fatal(err)
	}
	t.Fatal("the helper should have been killed before the pull finished")
}

// startCrashHelper runs TestCrashHelper in a child process.
func startCrashHelper(t *testing.T, root, ref string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), envCrashRoot+"="+root, envCrashRef+"="+ref)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// TestReconcileAfterKill SIGKILLs a process mid-pull (layer half
// downloaded, flattened files on disk) and mid-conversion (mkfs.ext4
// running), then reopens the store: the half-done work is gone and the
// image pulls again.
func TestReconcileAfterKill(t *testing.T) {
	reg := imagestest.StartRegistry(t)

	t.Run("during pull", func(t *testing.T) {
		img := imagestest.Image(t, v1Config(), randomLayer(t, 16<<20))
		imagestest.PushImage(t, reg+"/test/crash:pull", img)
		layers, _ := img.Layers()
		ld, _ := layers[0].Digest()
		proxy, halfSent := stallingProxy(t, reg, ld.String())
		ref := proxy + "/test/crash:pull"
		root := filepath.Join(t.TempDir(), "images")
		cmd := startCrashHelper(t, root, ref)
		select {
		case <-halfSent:
		case <-time.After(60 * time.Second):
			t.Fatal("helper never fetched the layer")
		}
		// Let the flattener write what it received.
		waitFor(t, func() bool { return fileSizeUnder(filepath.Join(root, "tmp")) > 0 })
		killAndCheckReopen(t, cmd, root, reg+"/test/crash:pull")
	})

	t.Run("during conversion", func(t *testing.T) {
		if testing.Short() {
			t.Skip("pushes the Debian image")
		}
		ref := reg + "/test/debian:crash"
		imagestest.PushImage(t, ref, imagestest.DebianPython(t))
		root := filepath.Join(t.TempDir(), "images")
		cmd := startCrashHelper(t, root, ref)
		waitFor(t, func() bool {
			m, _ := filepath.Glob(filepath.Join(root, "tmp", "*", "out", "rootfs.ext4"))
			return len(m) == 1
		})
		killAndCheckReopen(t, cmd, root, ref)
	})
}

// stallingProxy fronts the registry reg on 127.0.0.1 and serves half of
// the blob with digest, then stalls until the client goes away; halfSent
// receives once half was sent. It returns the proxy's host:port.
func stallingProxy(t *testing.T, reg, digest string) (string, <-chan struct{}) {
	t.Helper()
	halfSent := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, "http://"+reg+r.URL.RequestURI(), nil)
		req.Header = r.Header.Clone()
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+digest) || r.Method != http.MethodGet {
			io.Copy(w, resp.Body)
			return
		}
		io.CopyN(w, resp.Body, resp.ContentLength/2)
		w.(http.Flusher).Flush()
		select {
		case halfSent <- struct{}{}:
		default:
		}
		<-r.Context().Done()
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return strings.TrimPrefix(srv.URL, "http://"), halfSent
}

func killAndCheckReopen(t *testing.T, cmd *exec.Cmd, root, ref string) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if got := dirNames(t, filepath.Join(root, "blobs", "sha256")); len(got) != 0 {
		t.Fatalf("the helper committed before it was killed (test too slow to kill): %v", got)
	}
	if got := dirNames(t, filepath.Join(root, "tmp")); len(got) == 0 {
		t.Fatal("no staging left behind by the killed pull: nothing to reconcile")
	}
	s := newStore(t, Config{Root: root})
	if got := dirNames(t, filepath.Join(root, "tmp")); len(got) != 0 {
		t.Fatalf("staging after reopen: %v", got)
	}
	if _, err := s.Get(ref); err == nil {
		t.Fatal("a half-done image is visible after reopen")
	}
	img, err := pullWait(t, s, ref)
	if err != nil || img.Status != StatusReady {
		t.Fatalf("pull after reopen: %+v, %v", img, err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 2 minutes")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// fileSizeUnder sums regular-file sizes below dir.
func fileSizeUnder(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
		return nil
	})
	return n
}

// TestOpenSweepsLeftovers: staging, a digest directory without its
// record, a tag of a missing digest and a stray tag temporary are removed;
// a complete image survives.
func TestOpenSweepsLeftovers(t *testing.T) {
	reg := imagestest.StartRegistry(t)
	ref := reg + "/test/bb:v1"
	imagestest.PushImage(t, ref, imagestest.BusyboxImage(t))
	root := filepath.Join(t.TempDir(), "images")
	s, err := Open(Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	good, err := pullWait(t, s, ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{Root: root}); err == nil {
		t.Fatal("a second Open of a locked store succeeded")
	}
	s.Close()
	bogus := "sha256:" + strings.Repeat("b", 64)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "tmp", "abc-123", "rootfs", "usr"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "blobs", "sha256", strings.Repeat("c", 64)), 0o755))
	s2 := newStore(t, Config{Root: root})
	must(writeFileSync(s2.tagPath("docker.io/x/y:z"), []byte(`{"name":"docker.io/x/y:z","digest":"`+bogus+`"}`), 0o644))
	must(os.WriteFile(filepath.Join(root, "tags", ".tmp-123"), nil, 0o644))
	s2.Close()
	s3 := newStore(t, Config{Root: root})
	for _, d := range []string{"tmp"} {
		if got := dirNames(t, filepath.Join(root, d)); len(got) != 0 {
			t.Errorf("%s after reopen: %v", d, got)
		}
	}
	if got := dirNames(t, filepath.Join(root, "blobs", "sha256")); len(got) != 1 {
		t.Errorf("image dirs after reopen: %v", got)
	}
	if got := dirNames(t, filepath.Join(root, "tags")); len(got) != 1 {
		t.Errorf("tags after reopen: %v", got)
	}
	img, err := s3.Get(ref)
	if err != nil || img.Digest != good.Digest {
		t.Errorf("good image after reopen: %+v, %v", img, err)
	}
}

// TestQueuePositionAndClose: with one conversion slot, a second image
// waits as pending with queue position 1 while the first is stalled
// mid-download; Close cancels both and leaves no staging.
func TestQueuePositionAndClose(t *testing.T) {
	reg := imagestest.StartRegistry(t)
	slow := imagestest.Image(t, v1Config(), randomLayer(t, 4<<20))
	imagestest.PushImage(t, reg+"/test/slow:v1", slow)
	imagestest.PushImage(t, reg+"/test/bb:v1", imagestest.BusyboxImage(t))
	layers, _ := slow.Layers()
	ld, _ := layers[0].Digest()
	proxy, halfSent := stallingProxy(t, reg, ld.String())
	root := filepath.Join(t.TempDir(), "images")
	s, err := Open(Config{Root: root, MaxConversions: 1})
	if err != nil {
		t.Fatal(err)
	}
	first, second := proxy+"/test/slow:v1", proxy+"/test/bb:v1"
	if _, err := s.Pull(first, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-halfSent:
	case <-time.After(60 * time.Second):
		t.Fatal("first pull never fetched its layer")
	}
	if _, err := s.Pull(second, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		img, err := s.Get(second)
		return err == nil && img.QueuePosition != nil
	})
	img, _ := s.Get(second)
	if img.Status != StatusPending || *img.QueuePosition != 1 || img.Digest == "" {
		t.Errorf("queued image = %+v (position %d)", img, *img.QueuePosition)
	}
	if got, _ := s.Get(first); got.Status != StatusPulling || got.Progress.BytesDone == 0 || got.QueuePosition != nil {
		t.Errorf("stalled image = %+v", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{first, second} {
		if img, _ := s.Get(ref); img.Status != StatusFailed || !strings.Contains(img.Error, "context canceled") {
			t.Errorf("%s after Close: %+v", ref, img)
		}
	}
	if got := dirNames(t, filepath.Join(root, "tmp")); len(got) != 0 {
		t.Errorf("staging after Close: %v", got)
	}
	if _, err := s.Pull(first, PullOptions{}); !errdefs.IsUnavailable(err) {
		t.Errorf("Pull after Close: %v, want ErrUnavailable", err)
	}
}
