package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/instances/instancestest"
)

// bigCreate is a create request just over the body limit: valid JSON, so
// only the limit can refuse it.
func bigCreate() []byte {
	pad := strings.Repeat("x", api.MaxBodyBytes)
	return []byte(fmt.Sprintf(`{"name":"big","size":"64MB","env":{"PAD":%q}}`, pad))
}

func TestBodyLimit(t *testing.T) {
	h := instancestest.New(t, "", instancestest.NoClone)
	srv := api.NewServer(api.ServerConfig{Manager: h.M, Token: "s3cret"})
	for _, tc := range []struct {
		name    string
		handler http.Handler
		hdr     map[string]string
	}{
		{"unix handler", newSpecChecker(t).wrap(srv.Handler()), nil},
		{"token handler", srv.TokenHandler(), map[string]string{"Authorization": "Bearer s3cret"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := httptest.NewServer(tc.handler)
			defer ts.Close()
			for _, chunked := range []bool{false, true} {
				t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
					var body io.Reader = bytes.NewReader(bigCreate())
					if chunked {
						body = io.MultiReader(body) // unknown length: sent chunked
					}
					req, _ := http.NewRequest("POST", ts.URL+"/instances", body)
					req.Header.Set("Content-Type", "application/json")
					for k, v := range tc.hdr {
						req.Header.Set(k, v)
					}
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					defer resp.Body.Close()
					var e api.Error
					if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge ||
						e.Code != "payload_too_large" || e.Message == "" {
						t.Fatalf("POST /instances with %d bytes: %d %+v (%v), want 413 {code: payload_too_large}", len(bigCreate()), resp.StatusCode, e, err)
					}
				})
			}
			c, _ := client.New(ts.URL, "s3cret")
			if list, err := c.ListInstances(ctx, client.ListOptions{}); err != nil || len(list) != 0 {
				t.Fatalf("a refused request changed the instance list: %v %v", list, err)
			}
		})
	}
}

// TestBodyLimitKeepsSmallBodies: a body at the limit, sent chunked, still
// reaches the handler whole.
func TestBodyLimitKeepsSmallBodies(t *testing.T) {
	e := newEnv(t)
	req, _ := http.NewRequest("POST", e.url+"/instances", io.MultiReader(strings.NewReader(`{"name":"small","size":"64MB"}`)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		raw, _ := io.ReadAll(resp.Body)
		t.Fatalf("chunked small create: %d %s", resp.StatusCode, raw)
	}
}

// TestBodyLimitRefusesUnread: a declared oversize body is refused from its
// headers, without the server waiting for the body.
func TestBodyLimitRefusesUnread(t *testing.T) {
	h := instancestest.New(t, "", instancestest.NoClone)
	ts := httptest.NewServer(api.NewServer(api.ServerConfig{Manager: h.M}).Handler())
	defer ts.Close()
	conn, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "POST /instances HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", 1<<30)
	raw, _ := io.ReadAll(conn) // the server answers and closes without the 1 GiB
	if !strings.HasPrefix(string(raw), "HTTP/1.1 413") || !strings.Contains(string(raw), `"code":"payload_too_large"`) {
		t.Fatalf("declared 1 GiB body: %q", raw)
	}
}
