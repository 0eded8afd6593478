package api_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"

	yaml "go.yaml.in/yaml/v4"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/instances/instancestest"
	"github.com/zygote/zygote/internal/testutil"
)

// Tests of issue 10: snapshots by name, fields that work or are refused,
// sizes, hypeman's error codes, and error bodies without host paths.

// syncBuffer is a log sink the server writes from its handlers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newLoggedEnv is newEnv with a data directory of the test's choice and
// the server's log captured.
func newLoggedEnv(t *testing.T, dataDir string) (*env, *syncBuffer) {
	h := instancestest.New(t, dataDir, instancestest.Clone)
	logs := &syncBuffer{}
	srv := api.NewServer(api.ServerConfig{Manager: h.M, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	ts := httptest.NewServer(newSpecChecker(t).wrap(srv.Handler()))
	t.Cleanup(ts.Close)
	c, err := client.New(ts.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	return &env{h: h, c: c, url: ts.URL}, logs
}

type httpCase struct {
	name, method, path, body string
	status                   int
	code                     string
	// says is a text the message must hold (the field it names, a limit).
	says string
}

func (e *env) check(t *testing.T, cases []httpCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := rawDo(t, tc.method, e.url+tc.path, tc.body, nil)
			var got api.Error
			json.Unmarshal([]byte(body), &got)
			if resp.StatusCode != tc.status || (tc.code != "" && got.Code != tc.code) || !strings.Contains(got.Message, tc.says) {
				t.Fatalf("%s %s %s = %d %s; want %d %s saying %q", tc.method, tc.path, tc.body, resp.StatusCode, body, tc.status, tc.code, tc.says)
			}
		})
	}
}

func TestSnapshotRoutesTakeNames(t *testing.T) {
	e := newEnv(t)
	e.run(t, "web")
	e.run(t, "db")
	base, err := e.c.CreateSnapshot(ctx, "web", api.CreateSnapshotRequest{Kind: "Standby", Name: "base"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := e.c.GetSnapshot(ctx, "base"); err != nil || got.ID != base.ID {
		t.Fatalf("GET /snapshots/base: %+v %v", got, err)
	}
	f, err := e.c.ForkSnapshot(ctx, "base", api.ForkSnapshotRequest{Name: "w2", TargetState: "Standby"})
	if err != nil || f.ForkedFrom == nil || f.ForkedFrom.SnapshotID != base.ID {
		t.Fatalf("POST /snapshots/base/fork: %+v %v", f, err)
	}
	for _, ref := range []string{"web", "db"} {
		if _, err := e.c.CreateSnapshot(ctx, ref, api.CreateSnapshotRequest{Kind: "Standby", Name: "twin"}); err != nil {
			t.Fatal(err)
		}
	}
	e.check(t, []httpCase{
		{"ambiguous name", "GET", "/snapshots/twin", "", 409, "ambiguous", "twin"},
		{"fork of an ambiguous name", "POST", "/snapshots/twin/fork", `{"name":"w3"}`, 409, "ambiguous", "twin"},
		{"fork to a taken name", "POST", "/snapshots/base/fork", `{"name":"web"}`, 409, "conflict", "web"},
		{"restore by name into a running instance", "POST", "/instances/web/snapshots/base/restore", "{}", 409, "invalid_state", ""},
	})
	if err := e.c.DeleteSnapshot(ctx, "base"); err != nil {
		t.Fatalf("DELETE /snapshots/base: %v", err)
	}
	if _, err := e.c.GetSnapshot(ctx, base.ID); !errdefs.IsNotFound(err) {
		t.Fatalf("the snapshot deleted by name: %v", err)
	}
}

func TestFieldsWorkOrAreRefused(t *testing.T) {
	e := newEnv(t)
	e.run(t, "web")
	other := "linux/arm64"
	if runtime.GOARCH == "arm64" {
		other = "linux/amd64"
	}
	e.check(t, []httpCase{
		{"image", "POST", "/instances", `{"name":"a","size":"64MB","image":"docker.io/library/alpine:latest"}`, 501, "not_supported", "image"},
		{"gpu", "POST", "/instances", `{"name":"a","size":"64MB","gpu":{"profile":"L40S-1Q"}}`, 501, "not_supported", "gpu"},
		{"devices", "POST", "/instances", `{"name":"a","size":"64MB","devices":["gpu0"]}`, 501, "not_supported", "devices"},
		{"disk_io_bps", "POST", "/instances", `{"name":"a","size":"64MB","disk_io_bps":"100MB/s"}`, 501, "not_supported", "disk_io_bps"},
		{"network bandwidth", "POST", "/instances", `{"name":"a","size":"64MB","network":{"enabled":true,"bandwidth_download":"1Gbps"}}`, 501, "not_supported", "network.bandwidth_download"},
		{"network egress", "POST", "/instances", `{"name":"a","size":"64MB","network":{"egress":{"enabled":true}}}`, 501, "not_supported", "network.egress"},
		{"allow_peers without network", "POST", "/instances", `{"name":"a","size":"64MB","network":{"allow_peers":true}}`, 400, "invalid_request", "without networking"},
		{"publish without network", "POST", "/instances", `{"name":"a","size":"64MB","publish":[{"host_port":8080,"guest_port":80}]}`, 400, "invalid_request", "without networking"},
		{"volumes", "POST", "/instances", `{"name":"a","size":"64MB","volumes":[{"volume_id":"v","mount_path":"/data","readonly":true,"overlay":true}]}`, 501, "not_supported", "volumes[0].overlay"},
		{"skip_guest_agent", "POST", "/instances", `{"name":"a","size":"64MB","skip_guest_agent":true}`, 501, "not_supported", "skip_guest_agent"},
		{"unknown field", "POST", "/instances", `{"name":"a","size":"64MB","bogus":1}`, 400, "invalid_request", "bogus"},
		{"trailing data", "POST", "/instances", `{"name":"a","size":"64MB"}}`, 400, "invalid_request", "after the value"},
		{"two objects", "POST", "/instances", `{"name":"a","size":"64MB"} {"name":"b"}`, 400, "invalid_request", "after the value"},
		{"bad platform", "POST", "/instances", `{"name":"a","size":"64MB","platform":"linux/s390x"}`, 400, "invalid_platform", "linux/s390x"},
		{"other platform", "POST", "/instances", `{"name":"a","size":"64MB","platform":"` + other + `"}`, 404, "platform_not_available", other},
		{"overlay without image", "POST", "/instances", `{"name":"a","size":"64MB","overlay_size":"10GB"}`, 400, "invalid_overlay_size", "overlay_size"},
		{"bad hotplug size", "POST", "/instances", `{"name":"a","size":"64MB","hotplug_size":"lots"}`, 400, "invalid_hotplug_size", "hotplug_size"},
		{"start entrypoint", "POST", "/instances/web/start", `{"entrypoint":["/bin/sh"]}`, 501, "not_supported", "entrypoint"},
		{"start cmd", "POST", "/instances/web/start", `{"cmd":["sleep","1"]}`, 501, "not_supported", "cmd"},
		{"start unknown field", "POST", "/instances/web/start", `{"image":"x"}`, 400, "invalid_request", "image"},
		{"standby compression", "POST", "/instances/web/standby", `{"compression":{"enabled":true,"algorithm":"zstd"}}`, 501, "not_supported", "compression"},
		{"standby compression delay", "POST", "/instances/web/standby", `{"compression_delay":"30s"}`, 501, "not_supported", "compression_delay"},
		{"standby bad delay", "POST", "/instances/web/standby", `{"compression_delay":"soon"}`, 400, "invalid_compression_delay", "soon"},
		{"standby bad algorithm", "POST", "/instances/web/standby", `{"compression":{"enabled":false,"algorithm":"gzip"}}`, 400, "invalid_snapshot_compression", "gzip"},
		{"stop with a body", "POST", "/instances/web/stop", `{"force":true}`, 400, "invalid_request", "force"},
		{"snapshot bad level", "POST", "/instances/web/snapshots", `{"kind":"Standby","compression":{"enabled":true,"algorithm":"lz4","level":12}}`, 400, "invalid_snapshot_compression", "12"},
	})
	if list, _ := e.c.ListInstances(ctx, client.ListOptions{}); len(list) != 1 || list[0].State != "Running" {
		t.Fatalf("refused requests changed the instances: %+v", list)
	}
	// Zero values of hypeman's fields, the host's platform and a hotplug
	// size (hypeman's CLI always sends one) are accepted, and the instance
	// says it has no hotplug memory.
	resp, body := rawDo(t, "POST", e.url+"/instances", `{"name":"b","size":"64MB","gpu":null,"devices":[],"skip_guest_agent":false,"network":{},"platform":"linux/`+runtime.GOARCH+`","hotplug_size":"3GB"}`, nil)
	var in api.Instance
	if json.Unmarshal([]byte(body), &in); resp.StatusCode != 201 || in.HotplugSize != "0 B" {
		t.Fatalf("zero-valued fields: %d %s", resp.StatusCode, body)
	}
	// A disabled compression is what standby does anyway.
	if resp, body := rawDo(t, "POST", e.url+"/instances/web/standby", `{"compression":{"enabled":false}}`, nil); resp.StatusCode != 200 {
		t.Fatalf("standby without compression: %d %s", resp.StatusCode, body)
	}
}

func TestSizes(t *testing.T) {
	e, _ := newLoggedEnv(t, "")
	e.check(t, []httpCase{
		{"zero", "POST", "/instances", `{"name":"a","size":"0"}`, 400, "invalid_size", "more than 0"},
		{"zero MB", "POST", "/instances", `{"name":"a","size":"0MB"}`, 400, "invalid_size", "more than 0"},
		{"negative", "POST", "/instances", `{"name":"a","size":"-1GB"}`, 400, "invalid_size", "-1GB"},
		{"decimal", "POST", "/instances", `{"name":"a","size":"1.5GB"}`, 400, "invalid_size", "1.5GB"},
		{"GiB suffix", "POST", "/instances", `{"name":"a","size":"1GiB"}`, 400, "invalid_size", "GIB"},
		{"too small", "POST", "/instances", `{"name":"a","size":"1MB"}`, 400, "invalid_size", "64 MiB"},
		{"more than the host", "POST", "/instances", `{"name":"a","size":"999TB"}`, 400, "invalid_size", "the host's memory ("},
		{"overflow", "POST", "/instances", `{"name":"a","size":"99999999999TB"}`, 400, "invalid_size", "too large"},
	})
	in, err := e.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "gig", Size: "1GB"})
	if err != nil || in.MemoryBytes != 1<<30 {
		t.Fatalf("size 1GB: %+v %v", in, err)
	}
}

// A guest whose memory file the data directory cannot hold is 507
// insufficient_resources, with the free space in the message and nothing
// created.
func TestSizeAboveFreeDisk(t *testing.T) {
	dir := testutil.Tmpfs(t, 48<<20)
	e, _ := newLoggedEnv(t, dir)
	e.check(t, []httpCase{
		{"more than the disk", "POST", "/instances", `{"name":"a","size":"128MB"}`, 507, "insufficient_resources", "the data directory has"},
	})
	if entries, _ := os.ReadDir(filepath.Join(dir, "instances")); len(entries) != 0 {
		t.Fatalf("a refused create left %d instance directories", len(entries))
	}
}

func TestHypemanErrorCodes(t *testing.T) {
	e := newEnv(t)
	in := e.run(t, "web")
	os.Remove(filepath.Join(e.h.DataDir, "instances", in.ID, "vmm.log"))
	e.check(t, []httpCase{
		{"wait for Unknown", "GET", "/instances/web/wait?state=Unknown", "", 400, "invalid_state", "Unknown"},
		{"wait timeout zero", "GET", "/instances/web/wait?state=Running&timeout=0s", "", 400, "invalid_timeout", "0s"},
		{"no log yet", "GET", "/instances/web/logs?source=vmm", "", 404, "log_not_found", "web"},
		{"hypeman's log source", "GET", "/instances/web/logs?source=hypeman", "", 501, "not_supported", "hypeman"},
		{"wrong method", "PUT", "/instances", "{}", 405, "method_not_allowed", "GET, POST"},
		{"wrong method on a verb", "GET", "/instances/web/start", "", 405, "method_not_allowed", "POST"},
		{"wrong method on a snapshot", "PATCH", "/snapshots/x", "", 405, "method_not_allowed", "DELETE"},
		{"no route", "GET", "/nope", "", 404, "not_found", "/nope"},
		{"unknown hypervisor", "POST", "/instances", `{"name":"x","hypervisor":"bochs"}`, 400, "invalid_request", "bochs"},
		{"unknown target hypervisor", "POST", "/snapshots/x/fork", `{"name":"x","target_hypervisor":"bochs"}`, 400, "invalid_request", "bochs"},
	})
	resp, _ := rawDo(t, "PUT", e.url+"/instances", "{}", nil)
	if got := resp.Header.Get("Allow"); got != "GET, POST" {
		t.Fatalf("405 Allow header: %q", got)
	}
	if _, err := e.c.WaitForState(ctx, "web", "Unknown", 0); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("a 400 invalid_state reads back as %v, want InvalidArgument", err)
	}
}

func TestSpecRoutesNeedNoToken(t *testing.T) {
	h := instancestest.New(t, "", instancestest.NoClone)
	srv := api.NewServer(api.ServerConfig{Manager: h.M, Token: "s3cret"})
	ts := httptest.NewServer(srv.TokenHandler())
	defer ts.Close()
	for _, path := range []string{"/spec", "/spec.yaml", "/spec.json"} {
		if resp, body := rawDo(t, "GET", ts.URL+path, "", nil); resp.StatusCode != 200 || len(body) < 1000 {
			t.Fatalf("%s without a token: %d", path, resp.StatusCode)
		}
	}
	if resp, _ := rawDo(t, "GET", ts.URL+"/instances", "", nil); resp.StatusCode != 401 {
		t.Fatalf("/instances without a token: %d", resp.StatusCode)
	}
	// /spec.json is the YAML document, as JSON.
	_, body := rawDo(t, "GET", ts.URL+"/spec.json", "", nil)
	var fromJSON, fromYAML any
	if err := json.Unmarshal([]byte(body), &fromJSON); err != nil {
		t.Fatalf("/spec.json: %v", err)
	}
	if err := yaml.Unmarshal(api.Spec(), &fromYAML); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	a, _ := json.Marshal(fromJSON)
	b, _ := json.Marshal(fromYAML)
	if !bytes.Equal(a, b) {
		t.Fatal("/spec.json differs from openapi.yaml")
	}
}

// No error body carries a host path or a VMM's output: a 500 says only
// where to look (the request id), other errors have their paths redacted,
// and the log has the whole error under that id.
func TestErrorBodiesHideTheHost(t *testing.T) {
	e, logs := newLoggedEnv(t, "")
	vmmSays := "qemu says: qemu-system-x86_64: -object memory-backend-file,mem-path=/var/lib/zygote/instances/abc/memory: cannot map"
	e.h.Fake.FailNext("Boot", errors.New("qemu boot abc: dial unix /var/lib/zygote/instances/abc/qmp.sock: "+vmmSays))
	resp, body := rawDo(t, "POST", e.url+"/instances", `{"name":"a","size":"64MB"}`, nil)
	var got api.Error
	json.Unmarshal([]byte(body), &got)
	id := resp.Header.Get("X-Request-Id")
	if resp.StatusCode != 500 || got.Code != "internal_error" || id == "" || got.RequestID != id || !strings.Contains(got.Message, id) {
		t.Fatalf("a failed boot: %d %s (request id %q)", resp.StatusCode, body, id)
	}
	if strings.Contains(body, "/var/lib") || strings.Contains(body, "qemu says") {
		t.Fatalf("the 500 body leaks the host: %s", body)
	}
	if l := logs.String(); !strings.Contains(l, id) || !strings.Contains(l, "qemu says") {
		t.Fatalf("the log lacks the error under request id %s:\n%s", id, l)
	}

	// A full disk is 507 with its class's code; the path is redacted.
	e.run(t, "web")
	e.h.Fake.FailNext("SaveState", fmt.Errorf("write %s: %w", filepath.Join(e.h.DataDir, "instances", "x", "state"), syscall.ENOSPC))
	resp, body = rawDo(t, "POST", e.url+"/instances/web/standby", "", nil)
	if resp.StatusCode != 507 || !strings.Contains(body, "insufficient_storage") || !strings.Contains(body, "<path>") {
		t.Fatalf("standby on a full disk: %d %s", resp.StatusCode, body)
	}
	if strings.Contains(body, e.h.DataDir) {
		t.Fatalf("the 507 body leaks the data directory: %s", body)
	}
}
