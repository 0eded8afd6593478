// Package pagerapi is the wire contract of the pager's control API: the
// JSON types, the paths, and the one mapping between error classes
// (errdefs) and HTTP statuses. The pager (uffd/pager) serves it and the
// daemon's client (uffd/pagerclient) speaks it; neither imports the other.
//
// The API is HTTP/1.1 over a unix socket (mode 0600):
//
//	GET    /v1/health           Health
//	POST   /v1/sessions         CreateSessionRequest → 201 Session
//	GET    /v1/sessions         []Session
//	GET    /v1/sessions/{id}    Session
//	DELETE /v1/sessions/{id}    204 (404 if unknown)
//	GET    /v1/stats            Stats
//	GET    /metrics             Prometheus text format
//
// Errors are JSON Error bodies with the status of their class; Error.Err
// turns one back into an error that errors.Is matches against its class.
// Unknown request fields are refused (400): a typo must not silently drop
// an option.
package pagerapi
