package api_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/instances/instancestest"
	"github.com/zygote/zygote/store"
)

var ctx = context.Background()

type env struct {
	h   *instancestest.Harness
	c   *client.Client
	url string
}

func newEnv(t *testing.T) *env { return newEnvWith(t, instancestest.Clone) }

// newEnvWith serves a manager over the fake driver, copying with clone,
// behind the spec checker; /metrics serves a registry of Go metrics.
func newEnvWith(t *testing.T, clone instances.Cloner) *env {
	return newEnvOpts(t, clone, instancestest.Options{})
}

func newEnvOpts(t *testing.T, clone instances.Cloner, opts instancestest.Options) *env {
	h := instancestest.NewWith(t, "", clone, opts)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	srv := api.NewServer(api.ServerConfig{Manager: h.M, Token: "s3cret", Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{})})
	sc := newSpecChecker(t)
	ts := httptest.NewServer(sc.wrap(srv.Handler()))
	t.Cleanup(ts.Close)
	c, err := client.New(ts.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	return &env{h: h, c: c, url: ts.URL}
}

func (e *env) run(t *testing.T, name string) api.Instance {
	t.Helper()
	in, err := e.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: name, Size: "64MB"})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	res, err := e.c.WaitForState(ctx, in.ID, "Running", 10*time.Second)
	if err != nil || res.State != "Running" {
		t.Fatalf("wait Running: %+v %v", res, err)
	}
	in, _ = e.c.GetInstance(ctx, name)
	return in
}

func rawDo(t *testing.T, method, url, body string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp, string(raw)
}

func TestInstanceLifecycleOverHTTP(t *testing.T) {
	e := newEnv(t)
	if err := e.c.Health(ctx); err != nil {
		t.Fatal(err)
	}
	in := e.run(t, "web")
	if in.State != "Running" || in.Size != "64.0 MB" || in.MemoryBytes != 64<<20 || in.Hypervisor != "qemu" {
		t.Fatalf("instance: %+v", in)
	}
	list, err := e.c.ListInstances(ctx, client.ListOptions{State: "Running"})
	if err != nil || len(list) != 1 {
		t.Fatalf("list: %v %v", list, err)
	}
	if in, err = e.c.StandbyInstance(ctx, "web"); err != nil || in.State != "Standby" || !in.HasSnapshot {
		t.Fatalf("standby: %+v %v", in, err)
	}
	if in, err = e.c.RestoreInstance(ctx, "web"); err != nil || in.State != "Running" {
		t.Fatalf("restore: %+v %v", in, err)
	}
	if in, err = e.c.StopInstance(ctx, "web"); err != nil || in.State != "Stopped" {
		t.Fatalf("stop: %+v %v", in, err)
	}
	if in, err = e.c.StartInstance(ctx, in.ID[:8]); err != nil {
		t.Fatalf("start by id prefix: %+v %v", in, err)
	}
	if err := e.c.DeleteInstance(ctx, "web", true); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.GetInstance(ctx, "web"); !errdefs.IsNotFound(err) {
		t.Fatalf("get after delete: %v", err)
	}
}

func TestErrorStatusesAndCodes(t *testing.T) {
	e := newEnv(t)
	web := e.run(t, "web")
	e.run(t, "other")
	// Ambiguous references, made on purpose: two instances and two
	// snapshots whose ids share a prefix, and an instance named like
	// another's id.
	err := e.h.Store.Update(func(tx *store.Tx) error {
		for i, id := range []string{"ambig0aaaaaaaaaaaaaaaaaa", "ambig1aaaaaaaaaaaaaaaaaa"} {
			err := tx.PutInstance(store.Instance{ID: id, Name: fmt.Sprintf("ambig-%d", i), State: store.Stopped, CreatedAt: time.Now(),
				Spec: store.Spec{Hypervisor: "qemu", VCPUs: 1, MemoryBytes: 64 << 20}})
			if err != nil {
				return err
			}
			err = tx.PutSnapshot(store.Snapshot{ID: "snap" + id[:6] + "aaaaaaaaaaaaaa", Kind: store.SnapshotStopped, SourceInstanceID: id,
				SourceInstanceName: fmt.Sprintf("ambig-%d", i), CreatedAt: time.Now(), Spec: store.Spec{Hypervisor: "qemu", VCPUs: 1, MemoryBytes: 64 << 20}})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: web.ID, Size: "64MB"}); err != nil {
		t.Fatalf("an instance named like another's id: %v", err)
	}
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"bad name", "POST", "/instances", `{"name":"Bad_Name"}`, 400, "invalid_request"},
		{"bad size", "POST", "/instances", `{"name":"x","size":"1.5GB"}`, 400, "invalid_size"},
		{"unknown field", "POST", "/instances", `{"name":"x","bogus":1}`, 400, "invalid_request"},
		{"not json", "POST", "/instances", `{`, 400, "invalid_request"},
		{"duplicate name", "POST", "/instances", `{"name":"web","size":"64MB"}`, 409, "name_conflict"},
		{"unavailable hypervisor", "POST", "/instances", `{"name":"x","hypervisor":"vz"}`, 400, "invalid_request"},
		{"unknown id", "GET", "/instances/nope", "", 404, "not_found"},
		{"illegal transition", "POST", "/instances/web/restore", "", 409, "invalid_state"},
		{"start running", "POST", "/instances/web/start", "{}", 409, "invalid_state"},
		{"bad wait state", "GET", "/instances/web/wait?state=Bogus", "", 400, "invalid_state"},
		{"bad wait timeout", "GET", "/instances/web/wait?state=Running&timeout=soon", "", 400, "invalid_timeout"},
		{"bad force", "DELETE", "/instances/web?force=maybe", "", 400, "invalid_request"},
		{"bad log source", "GET", "/instances/web/logs?source=kernel", "", 400, "invalid_request"},
		{"no route", "GET", "/nope", "", 404, "not_found"},
		{"ambiguous id prefix", "GET", "/instances/ambig", "", 409, "ambiguous"},
		{"one's id, another's name", "GET", "/instances/" + web.ID, "", 409, "ambiguous"},
		{"ambiguous snapshot prefix", "GET", "/snapshots/snapambig", "", 409, "ambiguous"},
		{"ambiguous snapshot to delete", "DELETE", "/snapshots/snapambig", "", 409, "ambiguous"},
		{"unknown snapshot to delete", "DELETE", "/snapshots/nope", "", 404, "not_found"},
		{"bad list state", "GET", "/instances?state=Bogus", "", 400, "invalid_request"},
		{"bad snapshot kind filter", "GET", "/snapshots?kind=Full", "", 400, "invalid_request"},
		{"standby unknown", "POST", "/instances/nope/standby", "", 404, "not_found"},
		{"stop unknown", "POST", "/instances/nope/stop", "", 404, "not_found"},
		{"standby a stopped instance", "POST", "/instances/ambig-0/standby", "", 409, "invalid_state"},
		{"stop a stopped instance", "POST", "/instances/ambig-0/stop", "", 409, "invalid_state"},
		// Requests openapi.yaml itself rejects (the checker also fails the
		// test if the server accepted one).
		{"vcpus above the maximum", "POST", "/instances", `{"name":"x","vcpus":65}`, 400, "invalid_request"},
		{"kernel args too long", "POST", "/instances", `{"name":"x","kernel_args":"` + strings.Repeat("a", 1025) + `"}`, 400, "invalid_request"},
		{"name not a string", "POST", "/instances", `{"name":7}`, 400, "invalid_request"},
		{"no body", "POST", "/instances", ``, 400, "invalid_request"},
		{"hypervisor outside the enum", "POST", "/instances", `{"name":"x","hypervisor":"bogus"}`, 400, "invalid_request"},
		{"too many tags", "POST", "/instances", `{"name":"x","tags":{` + manyTags(51) + `}}`, 400, "invalid_request"},
		{"tag value too long", "POST", "/instances", `{"name":"x","tags":{"k":"` + strings.Repeat("a", 257) + `"}}`, 400, "invalid_request"},
		{"negative tail", "GET", "/instances/web/logs?tail=-1", "", 400, "invalid_request"},
		{"snapshot name invalid", "POST", "/instances/web/snapshots", `{"kind":"Standby","name":"UP"}`, 400, "invalid_request"},
		{"compression level", "POST", "/instances/web/snapshots", `{"kind":"Standby","compression":{"enabled":false,"level":20}}`, 400, "invalid_snapshot_compression"},
		{"compression algorithm", "POST", "/instances/web/snapshots", `{"kind":"Standby","compression":{"enabled":false,"algorithm":"gzip"}}`, 400, "invalid_snapshot_compression"},
		{"name prefix too long", "POST", "/instances/web/fork", `{"name_prefix":"` + strings.Repeat("a", 62) + `","count":1,"from_running":true}`, 400, "invalid_request"},
		{"fork count zero", "POST", "/instances/web/fork", `{"name_prefix":"w","count":0,"from_running":true}`, 400, "invalid_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := rawDo(t, tc.method, e.url+tc.path, tc.body, nil)
			if resp.StatusCode != tc.status || !strings.Contains(body, `"code":"`+tc.code+`"`) {
				t.Fatalf("%s %s = %d %s, want %d %s", tc.method, tc.path, resp.StatusCode, body, tc.status, tc.code)
			}
			if tc.status == 409 && resp.Header.Get("x-should-retry") != "false" {
				t.Fatal("a 409 lacks x-should-retry: false (hypeman's SDK would retry it)")
			}
		})
	}
	if list, _ := e.c.ListInstances(ctx, client.ListOptions{}); len(list) != 5 {
		t.Fatalf("rejected requests changed the instance list: %d", len(list))
	}
}

func TestTokenHandler(t *testing.T) {
	h := instancestest.New(t, "", instancestest.NoClone)
	srv := api.NewServer(api.ServerConfig{Manager: h.M, Token: "s3cret", Metrics: promhttp.HandlerFor(prometheus.NewRegistry(), promhttp.HandlerOpts{})})
	ts := httptest.NewServer(newSpecChecker(t).wrap(srv.TokenHandler()))
	defer ts.Close()
	if resp, _ := rawDo(t, "GET", ts.URL+"/health", "", nil); resp.StatusCode != 200 {
		t.Fatalf("/health without a token: %d", resp.StatusCode)
	}
	for _, hdr := range []map[string]string{nil, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}} {
		for _, path := range []string{"/instances", "/metrics"} {
			if resp, body := rawDo(t, "GET", ts.URL+path, "", hdr); resp.StatusCode != 401 || !strings.Contains(body, "Unauthorized") {
				t.Fatalf("%s with %v: %d %s", path, hdr, resp.StatusCode, body)
			}
		}
	}
	c, _ := client.New(ts.URL, "s3cret")
	if _, err := c.ListInstances(ctx, client.ListOptions{}); err != nil {
		t.Fatalf("with the token: %v", err)
	}
}

func TestExecOverWebSocket(t *testing.T) {
	e := newEnv(t)
	e.run(t, "web")
	var out, errb bytes.Buffer
	code, err := e.c.Exec(ctx, "web", client.ExecOptions{Command: []string{"echo", "hello"}, Stdout: &out, Stderr: &errb})
	if err != nil || code != 0 || out.String() != "hello\n" {
		t.Fatalf("echo: %d %v %q", code, err, out.String())
	}
	if code, err := e.c.Exec(ctx, "web", client.ExecOptions{Command: []string{"exit", "3"}}); err != nil || code != 3 {
		t.Fatalf("exit 3: %d %v", code, err)
	}
	out.Reset()
	code, err = e.c.Exec(ctx, "web", client.ExecOptions{Command: []string{"cat"}, Stdin: strings.NewReader("piped\n"), Stdout: &out})
	if err != nil || code != 0 || out.String() != "piped\n" {
		t.Fatalf("cat: %d %v %q", code, err, out.String())
	}
	errb.Reset()
	if code, _ := e.c.Exec(ctx, "web", client.ExecOptions{Command: []string{"no-such-command"}, Stderr: &errb}); code != 127 || !strings.Contains(errb.String(), "unknown command") {
		t.Fatalf("unknown command: %d %q", code, errb.String())
	}
	if _, err := e.c.StandbyInstance(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Exec(ctx, "web", client.ExecOptions{Command: []string{"true"}}); !errdefs.IsInvalidState(err) {
		t.Fatalf("exec into a standby instance: %v, want invalid_state", err)
	}
	if _, err := e.c.Exec(ctx, "nope", client.ExecOptions{Command: []string{"true"}}); !errdefs.IsNotFound(err) {
		t.Fatalf("exec into an unknown instance: %v, want not_found", err)
	}
}

func TestLogsSSE(t *testing.T) {
	e := newEnv(t)
	in := e.run(t, "web")
	logPath := filepath.Join(e.h.DataDir, "instances", in.ID, "console.log")
	var lines []string
	for i := 0; i < 150; i++ {
		lines = append(lines, "line "+string(rune('a'+i%26))+" \"quoted\"\r")
	}
	os.WriteFile(logPath, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	var out bytes.Buffer
	if err := e.c.Logs(ctx, "web", client.LogOptions{Tail: 3}, &out); err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(got) != 3 || got[0] != strings.TrimSuffix(lines[147], "\r") {
		t.Fatalf("tail 3: %q", got)
	}
	// Raw wire format: each line a JSON string in data:.
	resp, body := rawDo(t, "GET", e.url+"/instances/web/logs?tail=1", "", nil)
	if resp.Header.Get("Content-Type") != "text/event-stream" || body != "data: \"line t \\\"quoted\\\"\"\n\n" {
		t.Fatalf("wire format: %q %q", resp.Header.Get("Content-Type"), body)
	}
	// Follow sees lines appended later.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	go func() { e.c.Logs(fctx, "web", client.LogOptions{Follow: true, Tail: 0}, pw); pw.Close() }()
	// The stream's start races with the writer: append until a line shows.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		f, _ := os.OpenFile(logPath, os.O_APPEND|os.O_WRONLY, 0)
		defer f.Close()
		for {
			f.WriteString("appended later\n")
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	buf := make([]byte, 15)
	if _, err := io.ReadFull(pr, buf); err != nil || string(buf) != "appended later\n" {
		t.Fatalf("follow: %q %v", buf, err)
	}
}

func TestSpecServed(t *testing.T) {
	e := newEnv(t)
	raw, err := e.c.Spec(ctx)
	if err != nil || !bytes.Equal(raw, api.Spec()) {
		t.Fatalf("/spec: %v", err)
	}
	for _, path := range []string{"/spec", "/spec.yaml"} {
		if resp, body := rawDo(t, "GET", e.url+path, "", nil); resp.StatusCode != 200 || body != string(api.Spec()) {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
	}
	want, err := api.SpecJSON()
	if err != nil {
		t.Fatal(err)
	}
	if resp, body := rawDo(t, "GET", e.url+"/spec.json", "", nil); resp.StatusCode != 200 || body != string(want) {
		t.Fatalf("/spec.json: %d", resp.StatusCode)
	}
	resp, body := rawDo(t, "GET", e.url+"/metrics", "", nil)
	if resp.StatusCode != 200 || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("/metrics: %d %.200q", resp.StatusCode, body)
	}
}

func TestSnapshotsOverHTTP(t *testing.T) {
	e := newEnv(t)
	web := e.run(t, "web")
	sn, err := e.c.CreateSnapshot(ctx, "web", api.CreateSnapshotRequest{Kind: "Standby", Name: "base", Tags: map[string]string{"env": "ci"}})
	if err != nil || sn.Kind != "Standby" || sn.Name == nil || *sn.Name != "base" || sn.SourceInstanceID != web.ID || sn.SourceHypervisor != "qemu" {
		t.Fatalf("create snapshot: %+v %v", sn, err)
	}
	if in, _ := e.c.GetInstance(ctx, "web"); in.State != "Running" {
		t.Fatalf("source after a Standby snapshot: %s", in.State)
	}
	unnamed, err := e.c.CreateSnapshot(ctx, "web", api.CreateSnapshotRequest{Kind: "Standby"})
	if err != nil || unnamed.Name != nil {
		t.Fatalf("unnamed snapshot: %+v %v", unnamed, err)
	}
	list, err := e.c.ListSnapshots(ctx, client.SnapshotListOptions{Tags: map[string]string{"env": "ci"}})
	if err != nil || len(list) != 1 || list[0].ID != sn.ID {
		t.Fatalf("list by tag: %v %v", list, err)
	}
	list, _ = e.c.ListSnapshots(ctx, client.SnapshotListOptions{SourceInstanceID: web.ID})
	if len(list) != 2 {
		t.Fatalf("list by source: %d", len(list))
	}
	if got, err := e.c.GetSnapshot(ctx, sn.ID[:10]); err != nil || got.ID != sn.ID {
		t.Fatalf("get by prefix: %v", err)
	}
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"duplicate name", "POST", "/instances/web/snapshots", `{"kind":"Standby","name":"base"}`, 409, "conflict"},
		{"bad kind", "POST", "/instances/web/snapshots", `{"kind":"Full"}`, 400, "invalid_request"},
		{"bad name", "POST", "/instances/web/snapshots", `{"kind":"Standby","name":"-x"}`, 400, "invalid_request"},
		{"compression", "POST", "/instances/web/snapshots", `{"kind":"Standby","compression":{"enabled":true}}`, 501, "not_supported"},
		{"stopped kind of running", "POST", "/instances/web/snapshots", `{"kind":"Stopped"}`, 409, "conflict"},
		{"unknown instance", "POST", "/instances/nope/snapshots", `{"kind":"Standby"}`, 404, "not_found"},
		{"unknown snapshot", "GET", "/snapshots/nope", "", 404, "not_found"},
		{"restore into running", "POST", "/instances/web/snapshots/" + sn.ID + "/restore", "{}", 409, "invalid_state"},
		{"bad target", "POST", "/instances/web/snapshots/" + sn.ID + "/restore", `{"target_state":"Paused"}`, 400, "invalid_request"},
		{"other hypervisor", "POST", "/instances/web/snapshots/" + sn.ID + "/restore", `{"target_hypervisor":"firecracker"}`, 400, "invalid_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := rawDo(t, tc.method, e.url+tc.path, tc.body, nil)
			if resp.StatusCode != tc.status || !strings.Contains(body, `"code":"`+tc.code+`"`) {
				t.Fatalf("%s %s = %d %s, want %d %s", tc.method, tc.path, resp.StatusCode, body, tc.status, tc.code)
			}
		})
	}
	if _, err := e.c.StandbyInstance(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if in, err := e.c.RestoreSnapshot(ctx, "web", sn.ID, api.RestoreSnapshotRequest{}); err != nil || in.State != "Running" {
		t.Fatalf("restore snapshot: %+v %v", in, err)
	}
	if err := e.c.DeleteSnapshot(ctx, sn.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.GetSnapshot(ctx, sn.ID); !errdefs.IsNotFound(err) {
		t.Fatalf("get deleted snapshot: %v", err)
	}
}

func TestForkOverHTTP(t *testing.T) {
	e := newEnv(t)
	e.run(t, "src")
	resp, body := rawDo(t, "POST", e.url+"/instances/src/fork", `{"name":"child"}`, nil)
	if resp.StatusCode != 409 || !strings.Contains(body, "invalid_state") || !strings.Contains(body, "from_running") {
		t.Fatalf("fork a running source without from_running: %d %s", resp.StatusCode, body)
	}
	f, err := e.c.ForkInstance(ctx, "src", api.ForkInstanceRequest{Name: "child", FromRunning: true, TargetState: "Standby"})
	if err != nil || f.State != "Standby" || f.ForkedFrom == nil || f.ForkedFrom.InstanceName != "src" {
		t.Fatalf("fork: %+v %v", f, err)
	}
	batch, err := e.c.ForkInstanceBatch(ctx, "child", api.ForkInstanceRequest{NamePrefix: "w", Count: 2})
	if err != nil || len(batch) != 2 || batch[1].Name != "w-2" || batch[0].State != "Standby" {
		t.Fatalf("batch fork: %+v %v", batch, err)
	}
	sn, err := e.c.CreateSnapshot(ctx, "child", api.CreateSnapshotRequest{Kind: "Standby"})
	if err != nil {
		t.Fatal(err)
	}
	sf, err := e.c.ForkSnapshot(ctx, sn.ID, api.ForkSnapshotRequest{Name: "from-snap"})
	if err != nil || sf.ForkedFrom == nil || sf.ForkedFrom.SnapshotID != sn.ID {
		t.Fatalf("snapshot fork: %+v %v", sf, err)
	}
	for _, tc := range []struct {
		name, path, body string
		status           int
		code             string
	}{
		{"no name", "/instances/child/fork", `{}`, 400, "invalid_request"},
		{"bad name", "/instances/child/fork", `{"name":"UP"}`, 400, "invalid_request"},
		{"taken name", "/instances/child/fork", `{"name":"src"}`, 409, "name_conflict"},
		{"bad target", "/instances/child/fork", `{"name":"x","target_state":"Paused"}`, 400, "invalid_request"},
		{"unknown source", "/instances/nope/fork", `{"name":"x"}`, 404, "not_found"},
		{"unknown snapshot", "/snapshots/nope/fork", `{"name":"x"}`, 404, "not_found"},
		{"other hypervisor", "/snapshots/" + sn.ID + "/fork", `{"name":"x","target_hypervisor":"firecracker"}`, 400, "invalid_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := rawDo(t, "POST", e.url+tc.path, tc.body, nil)
			if resp.StatusCode != tc.status || !strings.Contains(body, `"code":"`+tc.code+`"`) {
				t.Fatalf("POST %s %s = %d %s, want %d %s", tc.path, tc.body, resp.StatusCode, body, tc.status, tc.code)
			}
		})
	}
}

// manyTags is n distinct JSON tag members.
func manyTags(n int) string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf(`"k%d":"v"`, i))
	}
	return strings.Join(out, ",")
}
