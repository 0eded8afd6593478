// Package api is zygote's REST API: the OpenAPI document (openapi.yaml,
// the source of truth, served at /spec), the wire types, the HTTP handlers
// and the one mapping of error classes (package errdefs) to HTTP statuses.
// The Go client the CLI uses lives in api/client.
//
// A Server serves the API on a unix socket (Handler: the socket's mode
// 0600 is the access control) or on TCP (TokenHandler: every request must
// carry the bearer token). Handlers decode a request, call the instance
// manager and map its error class: no business rule and no state live
// here. Errors are always the JSON body {code, message}; 409s and 5xx
// carry x-should-retry: false so that hypeman's SDK never re-sends a fork
// or a create. JSON request bodies are limited to MaxBodyBytes (413
// otherwise).
//
// The API never imports a hypervisor driver, the store, clone or the
// pager; see README.md.
package api
