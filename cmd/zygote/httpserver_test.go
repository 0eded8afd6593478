package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestDefaultHTTPTimeouts(t *testing.T) {
	s := defaultHTTPTimeouts.server(http.NotFoundHandler())
	if s.ReadHeaderTimeout <= 0 || s.IdleTimeout <= 0 || s.MaxHeaderBytes <= 0 {
		t.Errorf("daemon http.Server lacks a limit: ReadHeaderTimeout %v IdleTimeout %v MaxHeaderBytes %d",
			s.ReadHeaderTimeout, s.IdleTimeout, s.MaxHeaderBytes)
	}
	if s.WriteTimeout != 0 || s.ReadTimeout != 0 {
		t.Errorf("WriteTimeout %v / ReadTimeout %v would cut `logs -f` and `exec` streams", s.WriteTimeout, s.ReadTimeout)
	}
}

// TestHTTPTimeouts: idle keep-alive connections are closed, and a
// response that streams for longer than every timeout (logs -f) is not.
func TestHTTPTimeouts(t *testing.T) {
	lim := httpTimeouts{ReadHeader: 200 * time.Millisecond, Idle: 200 * time.Millisecond, MaxHeaderBytes: 4 << 10}
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 10 { // 1 s, five times every timeout
			fmt.Fprintf(w, "data: %d\n\n", i)
			http.NewResponseController(w).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := lim.server(mux)
	go srv.Serve(ln) // owner: this test; Close ends it
	t.Cleanup(func() { srv.Close() })

	t.Run("stream outlives the timeouts", func(t *testing.T) {
		resp, err := http.Get("http://" + ln.Addr().String() + "/stream")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("stream cut after %q: %v", body, err)
		}
		if n := strings.Count(string(body), "data:"); n != 10 {
			t.Fatalf("got %d events, want 10: %q", n, body)
		}
	})
	t.Run("idle keep-alive closed", func(t *testing.T) {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("idle connection: got %v, want EOF (closed by the idle timeout)", err)
		}
	})
}
