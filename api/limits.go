package api

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"net/http"
)

// MaxBodyBytes is the largest request body the API accepts: its bodies
// are small JSON documents.
const MaxBodyBytes = 1 << 20

// streamingBody lists the media types of request bodies that are streams,
// not JSON documents; the routes that take them bound their own input.
var streamingBody = map[string]bool{
	"application/octet-stream": true,
	"application/x-tar":        true,
}

// limitBodies answers 413 with the API's error body {code, message} when a
// request's body is larger than MaxBodyBytes, before any handler runs: a
// declared Content-Length is refused unread, and a chunked body is read
// up to the limit (at most MaxBodyBytes in memory) and handed on whole.
func limitBodies(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || streaming(r) {
			next.ServeHTTP(w, r)
			return
		}
		if r.ContentLength > MaxBodyBytes {
			tooLarge(w, r, r.ContentLength)
			return
		}
		if r.ContentLength >= 0 {
			// Declared and small: the server never reads past it.
			next.ServeHTTP(w, r)
			return
		}
		raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
		if err != nil {
			if _, ok := err.(*http.MaxBytesError); ok {
				tooLarge(w, r, -1)
				return
			}
			writeError(w, fmt.Errorf("read request body: %w", err))
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(raw))
		r.ContentLength = int64(len(raw))
		next.ServeHTTP(w, r)
	})
}

func streaming(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && streamingBody[mt]
}

// tooLarge writes 413. The connection is closed after it, so the unread
// rest of the body is never read.
func tooLarge(w http.ResponseWriter, r *http.Request, size int64) {
	msg := fmt.Sprintf("%s %s: request body is larger than %d bytes", r.Method, r.URL.Path, MaxBodyBytes)
	if size >= 0 {
		msg = fmt.Sprintf("%s %s: request body is %d bytes, more than %d", r.Method, r.URL.Path, size, MaxBodyBytes)
	}
	w.Header().Set("Connection", "close")
	writeJSON(w, http.StatusRequestEntityTooLarge, Error{Code: "payload_too_large", Message: msg})
}
