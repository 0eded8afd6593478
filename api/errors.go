package api

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"syscall"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/instances"
)

// errorClasses maps each error class to its HTTP status and code, once,
// at the edge. Order matters only for errors that wrap several classes:
// the first match wins.
var errorClasses = []struct {
	class  error
	status int
	code   string
}{
	{errdefs.ErrInvalidArgument, http.StatusBadRequest, "invalid_request"},
	{errdefs.ErrUnauthorized, http.StatusUnauthorized, "Unauthorized"},
	{errdefs.ErrNotFound, http.StatusNotFound, "not_found"},
	{errdefs.ErrAmbiguous, http.StatusConflict, "ambiguous"},
	{errdefs.ErrAlreadyExists, http.StatusConflict, "name_conflict"},
	{errdefs.ErrInvalidState, http.StatusConflict, "invalid_state"},
	{errdefs.ErrConflict, http.StatusConflict, "conflict"},
	{errdefs.ErrNotImplemented, http.StatusNotImplemented, "not_supported"},
	{errdefs.ErrUnavailable, http.StatusServiceUnavailable, "unavailable"},
	{errdefs.ErrLimitExceeded, http.StatusTooManyRequests, "too_many_sessions"},
	// A full disk is a full disk whichever layer hit it.
	{syscall.ENOSPC, http.StatusInsufficientStorage, "insufficient_storage"},
	{errdefs.ErrResourceExhausted, http.StatusInsufficientStorage, "insufficient_resources"},
}

// routeCodes are the codes a route gives an error class in place of the
// class's own (hypeman's: "invalid_size", "log_not_found", "conflict" on
// snapshot routes, …). FromHTTP reads them back into their class.
var routeCodes = []struct {
	code   string
	status int
	class  error
}{
	{"invalid_size", 400, errdefs.ErrInvalidArgument},
	{"invalid_hotplug_size", 400, errdefs.ErrInvalidArgument},
	{"invalid_overlay_size", 400, errdefs.ErrInvalidArgument},
	{"invalid_platform", 400, errdefs.ErrInvalidArgument},
	{"invalid_name", 400, errdefs.ErrInvalidArgument},
	{"invalid_state", 400, errdefs.ErrInvalidArgument},
	{"invalid_timeout", 400, errdefs.ErrInvalidArgument},
	{"invalid_snapshot_compression", 400, errdefs.ErrInvalidArgument},
	{"invalid_compression_delay", 400, errdefs.ErrInvalidArgument},
	{"log_not_found", 404, errdefs.ErrNotFound},
	{"platform_not_available", 404, errdefs.ErrNotFound},
	{"method_not_allowed", 405, errdefs.ErrInvalidArgument},
	{"conflict", 409, errdefs.ErrConflict},
}

// codedError gives an error a route-specific status and code; its class
// (what errors.Is sees) is unchanged.
type codedError struct {
	status int
	code   string
	err    error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// withCode answers err with status and code.
func withCode(status int, code string, err error) error {
	return &codedError{status: status, code: code, err: err}
}

// toHTTP returns the status and body for err. A size field the manager
// refused (instances.FieldError) is answered with hypeman's per-field code
// ("invalid_size", "invalid_overlay_size").
func toHTTP(err error) (int, Error) {
	var ce *codedError
	if errors.As(err, &ce) {
		return ce.status, Error{Code: ce.code, Message: err.Error()}
	}
	var fe *instances.FieldError
	if errors.As(err, &fe) && errdefs.IsInvalidArgument(err) && strings.HasSuffix(fe.Field, "size") {
		return http.StatusBadRequest, Error{Code: "invalid_" + fe.Field, Message: err.Error()}
	}
	for _, c := range errorClasses {
		if errors.Is(err, c.class) {
			return c.status, Error{Code: c.code, Message: err.Error()}
		}
	}
	return http.StatusInternalServerError, Error{Code: "internal_error", Message: err.Error()}
}

// FromHTTP turns an error body back into an error of the right class, so
// clients can test it with errdefs.Is*: the code if it is one the status
// can carry, else the status.
func FromHTTP(status int, body Error) error {
	for _, c := range routeCodes {
		if c.code == body.Code && c.status == status {
			return &StatusError{Status: status, Body: body, class: c.class}
		}
	}
	for _, c := range errorClasses {
		if c.code == body.Code && c.status == status {
			return &StatusError{Status: status, Body: body, class: c.class}
		}
	}
	for _, c := range errorClasses {
		if c.status == status {
			return &StatusError{Status: status, Body: body, class: c.class}
		}
	}
	return &StatusError{Status: status, Body: body}
}

// StatusError is an API error as a client sees it.
type StatusError struct {
	Status int
	Body   Error
	class  error
}

func (e *StatusError) Error() string {
	if e.Body.Message != "" {
		return e.Body.Message
	}
	return http.StatusText(e.Status)
}

// Unwrap exposes the error class.
func (e *StatusError) Unwrap() error { return e.class }

// requestIDHeader carries the id the daemon logs an error under.
const requestIDHeader = "X-Request-Id"

func newRequestID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// apiRoots are the first path segments of the API's own routes: a message
// naming a route is not naming a host path.
var apiRoots = map[string]bool{"instances": true, "snapshots": true, "images": true, "health": true, "spec": true,
	"spec.yaml": true, "spec.json": true, "metrics": true}

// absPath matches an absolute path of two or more components in a
// message, without a trailing ':' or '.' (the message's own punctuation).
var absPath = regexp.MustCompile(`(^|[^A-Za-z0-9_.~-])(/[^\s"'),;|/]+/[^\s"'),;|]*[^\s"'),;|:.])`)

// redactPaths replaces every host path in msg with "<path>". A client
// learns nothing of the host's layout from an error body; the daemon log
// has the full error under the request id. A path under one of the API's
// own roots (/instances/web/start) is a route, not a host path.
// A URL's path (a registry's "http://host/v2/…" in a failed pull) is not
// a host path either.
func redactPaths(msg string) string {
	var b strings.Builder
	last := 0
	for _, loc := range absPath.FindAllStringSubmatchIndex(msg, -1) {
		start, end := loc[4], loc[5] // the path, group 2
		p := msg[start:end]
		first, _, _ := strings.Cut(p[1:], "/")
		if apiRoots[first] || strings.HasSuffix(msg[:start], ":/") || strings.HasSuffix(msg[:start], "://") {
			continue
		}
		b.WriteString(msg[last:start])
		b.WriteString("<path>")
		last = end
	}
	b.WriteString(msg[last:])
	return b.String()
}

// writeError answers err. The body's message never carries a host path
// and a 500's never carries the error at all (it may hold a VMM's raw
// output): the full error goes to the daemon log under the request id,
// which the body and the X-Request-Id header return.
func writeError(w http.ResponseWriter, err error) {
	status, body := toHTTP(err)
	id := w.Header().Get(requestIDHeader)
	if rec := recorderOf(w); rec != nil {
		rec.err = err
	}
	body.RequestID = id
	switch {
	case status == http.StatusInternalServerError:
		body.Message = "internal error; the daemon log has the details"
		if id != "" {
			body.Message += " under request id " + id
		}
	default:
		body.Message = redactPaths(body.Message)
	}
	// hypeman's SDK retries 409 and 5xx; a retried fork or create would run
	// twice.
	if status == http.StatusConflict || status >= 500 {
		w.Header().Set("x-should-retry", "false")
	}
	if status == http.StatusTooManyRequests {
		// A session slot frees when another exec or cp ends.
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, body)
}

// recorderOf finds the logging middleware's recorder under w.
func recorderOf(w http.ResponseWriter) *statusRecorder {
	for {
		if rec, ok := w.(*statusRecorder); ok {
			return rec
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return nil
		}
		w = u.Unwrap()
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

// snapshotConflict answers a state or name conflict on a snapshot route
// with hypeman's code there, "conflict" (elsewhere: invalid_state,
// name_conflict).
func snapshotConflict(err error) error {
	if errdefs.IsInvalidState(err) || errdefs.IsAlreadyExists(err) {
		return withCode(http.StatusConflict, "conflict", err)
	}
	return err
}

// invalidf is a 400 with a route-specific code.
func invalidf(code, format string, args ...any) error {
	return withCode(http.StatusBadRequest, code, fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalidArgument)...))
}
