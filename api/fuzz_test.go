package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/instances/instancestest"
	"github.com/zygote/zygote/internal/bytesize"
	"github.com/zygote/zygote/internal/ids"
	"github.com/zygote/zygote/internal/names"
)

// fuzzRoutes are the API's JSON routes (exec, a WebSocket, is not one);
// {id} and {sid} take the fuzzed ref.
var fuzzRoutes = []struct{ method, path string }{
	{"GET", "/instances"},
	{"POST", "/instances"},
	{"GET", "/instances/{id}"},
	{"DELETE", "/instances/{id}"},
	{"POST", "/instances/{id}/start"},
	{"POST", "/instances/{id}/stop"},
	{"POST", "/instances/{id}/standby"},
	{"POST", "/instances/{id}/restore"},
	{"GET", "/instances/{id}/wait"},
	{"GET", "/instances/{id}/logs"},
	{"POST", "/instances/{id}/fork"},
	{"POST", "/instances/{id}/snapshots"},
	{"POST", "/instances/{id}/snapshots/{sid}/restore"},
	{"GET", "/snapshots"},
	{"GET", "/snapshots/{sid}"},
	{"DELETE", "/snapshots/{sid}"},
	{"POST", "/snapshots/{sid}/fork"},
	{"PUT", "/instances/{id}"},
	{"GET", "/spec.json"},
}

// FuzzAPI drives the API's decoding and its name, ref and size parsing
// with arbitrary input against a real manager (fake driver): no panic, no
// 500, no host path in a response, and every file the daemon makes stays
// inside its data directory, in a directory named by a generated id.
// scripts/test.sh runs it for a bounded time; `go test` runs the seeds.
func FuzzAPI(f *testing.F) {
	dataDir := filepath.Join(f.TempDir(), "data")
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		f.Fatal(err)
	}
	h := instancestest.New(f, dataDir, instancestest.Clone)
	srv := api.NewServer(api.ServerConfig{Manager: h.M, Logger: slog.New(slog.DiscardHandler)})
	handler := srv.Handler()
	for i, r := range fuzzRoutes {
		body := map[string]string{
			"POST /instances":                              `{"name":"fz","size":"64MB","hotplug_size":"3GB","tags":{"a":"b"}}`,
			"POST /instances/{id}/fork":                    `{"name":"fz","from_running":true,"target_state":"Standby"}`,
			"POST /instances/{id}/snapshots":               `{"kind":"Standby","name":"fz"}`,
			"POST /snapshots/{sid}/fork":                   `{"name":"fz","target_state":"Stopped","target_hypervisor":"qemu"}`,
			"POST /instances/{id}/snapshots/{sid}/restore": `{"target_state":"Standby"}`,
			"POST /instances/{id}/standby":                 `{"compression":{"enabled":false,"algorithm":"lz4","level":3}}`,
		}[r.method+" "+r.path]
		f.Add(uint8(i), "web", "base", "state=Running&tail=3&timeout=1s", []byte(body))
	}
	f.Add(uint8(1), "", "", "", []byte(`{"name":"a","size":"999TB"}`))
	f.Add(uint8(1), "", "", "", []byte(`{"name":"a","size":"64MB","gpu":{"profile":"x"}}`))
	f.Add(uint8(2), "../../etc", "..", "", []byte(nil))
	f.Add(uint8(14), "w", "ba", "", []byte(nil))

	outside := filepath.Dir(dataDir)
	f.Fuzz(func(t *testing.T, route uint8, ref, snapRef, query string, body []byte) {
		// The parsers alone: a size parses to a positive number of bytes
		// or fails as a bad argument; a valid name is one path element.
		if n, err := bytesize.Parse(ref); err == nil && n < 0 {
			t.Fatalf("bytesize.Parse(%q) = %d", ref, n)
		}
		if names.Validate("name", ref) == nil {
			if p := filepath.Join(dataDir, "instances", ref); filepath.Dir(p) != filepath.Join(dataDir, "instances") {
				t.Fatalf("valid name %q escapes its directory: %s", ref, p)
			}
		}

		ensureFixtures(t, h)
		r := fuzzRoutes[int(route)%len(fuzzRoutes)]
		path := strings.NewReplacer("{id}", url.PathEscape(ref), "{sid}", url.PathEscape(snapRef)).Replace(r.path)
		q, err := url.ParseQuery(query)
		if err != nil {
			q = url.Values{}
		}
		// Bound the calls that may block: a wait ends within 20 ms, a log
		// never follows.
		if d, err := time.ParseDuration(q.Get("timeout")); q.Get("timeout") == "" || (err == nil && d > 20*time.Millisecond) {
			q.Set("timeout", "20ms")
		}
		q.Del("follow")
		req := httptest.NewRequest(r.method, "http://zygote"+path, bytes.NewReader(body))
		req.URL.RawQuery = q.Encode()
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		resp := rec.Body.String()
		if rec.Code == http.StatusInternalServerError {
			t.Fatalf("%s %s?%s %q = 500 %s", r.method, path, req.URL.RawQuery, body, resp)
		}
		if strings.Contains(resp, outside) {
			t.Fatalf("%s %s: the response names a host path: %s", r.method, path, resp)
		}
		cleanUpCreated(t, h, rec)
		checkLayout(t, dataDir, outside)
	})
}

// ensureFixtures keeps an instance "web" and its snapshot "base" around,
// so fuzzed refs reach the handlers' deeper paths.
func ensureFixtures(t *testing.T, h *instancestest.Harness) {
	ctx := context.Background()
	if _, err := h.M.Get(ctx, "web"); err != nil {
		if _, err := h.M.Create(ctx, instances.CreateRequest{Name: "web", MemoryBytes: 64 << 20}); err != nil {
			t.Fatalf("fixture web: %v", err)
		}
		if res, err := h.M.Wait(ctx, "web", instances.StateRunning, 10*time.Second); err != nil || res.State != instances.StateRunning {
			t.Fatalf("fixture web: %+v %v", res, err)
		}
	}
	if _, err := h.M.GetSnapshot(ctx, "base"); err != nil {
		if _, err := h.M.CreateSnapshot(ctx, "web", instances.SnapshotRequest{Kind: instances.SnapshotStandby, Name: "base"}); err != nil {
			t.Logf("fixture base: %v", err) // web may be Stopped; a later call makes it
		}
	}
}

// cleanUpCreated deletes what a call created (instances, snapshots other
// than the fixtures), so the store stays small while fuzzing.
func cleanUpCreated(t *testing.T, h *instancestest.Harness, rec *httptest.ResponseRecorder) {
	if rec.Code != http.StatusCreated {
		return
	}
	ctx := context.Background()
	raw, _ := io.ReadAll(rec.Result().Body)
	var one struct {
		ID   string `json:"id"`
		Kind string `json:"kind"`
	}
	var many []struct {
		ID string `json:"id"`
	}
	switch {
	case json.Unmarshal(raw, &one) == nil && one.Kind != "":
		if err := h.M.DeleteSnapshot(ctx, one.ID); err != nil {
			t.Fatalf("delete snapshot %s: %v", one.ID, err)
		}
	case json.Unmarshal(raw, &one) == nil:
		many = append(many, struct {
			ID string `json:"id"`
		}{one.ID})
	default:
		json.Unmarshal(raw, &many)
	}
	for _, in := range many {
		if err := h.M.Delete(ctx, in.ID, true); err != nil {
			t.Fatalf("delete instance %s: %v", in.ID, err)
		}
	}
}

// checkLayout: the data directory's parent holds only the data directory,
// and instances/ and snapshots/ hold only id-named directories (plus a
// snapshot restore's staging names, which the operation removes).
func checkLayout(t *testing.T, dataDir, outside string) {
	entries, _ := os.ReadDir(outside)
	for _, e := range entries {
		if filepath.Join(outside, e.Name()) != dataDir {
			t.Fatalf("a file outside the data directory: %s", filepath.Join(outside, e.Name()))
		}
	}
	for _, sub := range []string{"instances", "snapshots"} {
		entries, _ := os.ReadDir(filepath.Join(dataDir, sub))
		for _, e := range entries {
			if !ids.Valid(e.Name()) {
				t.Fatalf("%s/%s is not named by an id", sub, e.Name())
			}
		}
	}
}
