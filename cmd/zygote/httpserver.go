package main

import (
	"net/http"
	"time"
)

// httpTimeouts bound what a client may hold open on the daemon's HTTP
// servers. There is deliberately no write or whole-request read timeout:
// `logs -f` (server-sent events) and `exec` (a hijacked WebSocket) stay
// open as long as the user wants.
type httpTimeouts struct {
	// ReadHeader is how long a connection may take to send its request
	// headers (a client that never finishes them is cut off).
	ReadHeader time.Duration
	// Idle is how long a keep-alive connection may wait for its next
	// request.
	Idle time.Duration
	// MaxHeaderBytes caps the request headers.
	MaxHeaderBytes int
}

var defaultHTTPTimeouts = httpTimeouts{
	ReadHeader:     10 * time.Second,
	Idle:           2 * time.Minute,
	MaxHeaderBytes: 64 << 10,
}

// server returns an http.Server for h with these limits. The request body
// limit lives in the api package (api/limits.go).
func (t httpTimeouts) server(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.ReadHeader,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    t.MaxHeaderBytes,
	}
}
