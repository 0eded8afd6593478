package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"syscall"

	"github.com/zygote/zygote/errdefs"
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
	{errdefs.ErrResourceExhausted, http.StatusInsufficientStorage, "insufficient_storage"},
	{errdefs.ErrLimitExceeded, http.StatusTooManyRequests, "too_many_sessions"},
	// A full disk is a full disk whichever layer hit it.
	{syscall.ENOSPC, http.StatusInsufficientStorage, "insufficient_storage"},
}

// toHTTP returns the status and body for err.
func toHTTP(err error) (int, Error) {
	for _, c := range errorClasses {
		if errors.Is(err, c.class) {
			return c.status, Error{Code: c.code, Message: err.Error()}
		}
	}
	return http.StatusInternalServerError, Error{Code: "internal_error", Message: err.Error()}
}

// FromHTTP turns an error body back into an error of the right class, so
// clients can test it with errdefs.Is*.
func FromHTTP(status int, body Error) error {
	for _, c := range errorClasses {
		if c.code == body.Code || (body.Code == "" && c.status == status) {
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

func writeError(w http.ResponseWriter, err error) {
	status, body := toHTTP(err)
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

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
