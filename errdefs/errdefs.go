// Package errdefs defines the error classes every zygote layer uses to tell
// the API edge what kind of failure happened, without the edge importing the
// layer. Wrap a class with context (fmt.Errorf("fork %s: %w", id,
// errdefs.ErrNotFound)) and test for it with errors.Is or the Is* helpers;
// api/errors.go maps each class to an HTTP status exactly once.
package errdefs

import "errors"

// The classes. Each maps to one HTTP status in the api package.
var (
	// ErrInvalidArgument: the request is malformed (bad name, bad size,
	// unknown enum value). 400.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: the named resource does not exist. 404.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a resource with that unique name exists. 409.
	ErrAlreadyExists = errors.New("already exists")
	// ErrAmbiguous: an id prefix matches several resources. 409.
	ErrAmbiguous = errors.New("ambiguous")
	// ErrInvalidState: the operation is illegal in the resource's current
	// state (standby of a stopped VM). 409.
	ErrInvalidState = errors.New("invalid state")
	// ErrConflict: another operation holds the resource, or the request
	// conflicts with existing state in a way that is not a state-machine
	// rule. 409.
	ErrConflict = errors.New("conflict")
	// ErrNotImplemented: the hypervisor or platform cannot do this. 501.
	ErrNotImplemented = errors.New("not implemented")
	// ErrUnavailable: a dependency (guest agent, pager, VMM) is not
	// reachable right now. 503.
	ErrUnavailable = errors.New("unavailable")
	// ErrResourceExhausted: out of disk, memory or another host resource. 507.
	ErrResourceExhausted = errors.New("resource exhausted")
	// ErrUnauthorized: missing or wrong credentials. 401.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrLimitExceeded: a per-resource bound on concurrent use (open
	// exec/cp sessions) is reached; retry later. 429.
	ErrLimitExceeded = errors.New("limit exceeded")
)

func IsInvalidArgument(err error) bool   { return errors.Is(err, ErrInvalidArgument) }
func IsNotFound(err error) bool          { return errors.Is(err, ErrNotFound) }
func IsAlreadyExists(err error) bool     { return errors.Is(err, ErrAlreadyExists) }
func IsAmbiguous(err error) bool         { return errors.Is(err, ErrAmbiguous) }
func IsInvalidState(err error) bool      { return errors.Is(err, ErrInvalidState) }
func IsConflict(err error) bool          { return errors.Is(err, ErrConflict) }
func IsNotImplemented(err error) bool    { return errors.Is(err, ErrNotImplemented) }
func IsUnavailable(err error) bool       { return errors.Is(err, ErrUnavailable) }
func IsResourceExhausted(err error) bool { return errors.Is(err, ErrResourceExhausted) }
func IsUnauthorized(err error) bool      { return errors.Is(err, ErrUnauthorized) }
func IsLimitExceeded(err error) bool     { return errors.Is(err, ErrLimitExceeded) }
