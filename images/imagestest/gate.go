package imagestest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// Gate fronts the registry reg (host:port) with a proxy on 127.0.0.1 that
// passes everything through at once but holds downloads of the blobs
// named in hold (digests "sha256:…"; every blob when none is named) until
// release is called, so a test can act while a pull is in flight. It
// returns the proxy's host:port. The proxy is closed at t's cleanup.
func Gate(t testing.TB, reg string, hold ...string) (addr string, release func()) {
	t.Helper()
	open := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(open) }) }
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if held(r, hold) {
			select {
			case <-open:
			case <-r.Context().Done():
				return
			}
		}
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, "http://"+reg+r.URL.RequestURI(), r.Body)
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
		io.Copy(w, resp.Body)
	}))
	t.Cleanup(func() {
		release()
		srv.CloseClientConnections()
		srv.Close()
	})
	return strings.TrimPrefix(srv.URL, "http://"), release
}

func held(r *http.Request, hold []string) bool {
	if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
		return false
	}
	if len(hold) == 0 {
		return true
	}
	for _, d := range hold {
		if strings.HasSuffix(r.URL.Path, "/blobs/"+d) {
			return true
		}
	}
	return false
}
