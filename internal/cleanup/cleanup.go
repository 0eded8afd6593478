// Package cleanup is an undo stack for multi-step operations: each step
// registers its undo right after it succeeds; on failure the stack runs
// newest first, on success the caller releases it.
//
//	undo := cleanup.New()
//	defer undo.Run(ctx)
//	... step; undo.Add("remove dir", func(ctx context.Context) error { ... })
//	undo.Release() // success: keep everything
//
// Undo functions run on a context detached from the caller's cancellation
// (with a bound), so a cancelled request still cleans up after itself.
package cleanup

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Timeout bounds the whole undo run.
const Timeout = 60 * time.Second

type step struct {
	name string
	fn   func(context.Context) error
}

// Stack holds undo steps. The zero value is ready to use. Not safe for
// concurrent use: one operation owns it.
type Stack struct {
	steps    []step
	released bool
}

// New returns an empty stack.
func New() *Stack { return &Stack{} }

// Add registers an undo step named for error messages.
func (s *Stack) Add(name string, fn func(context.Context) error) {
	s.steps = append(s.steps, step{name: name, fn: fn})
}

// Release keeps everything the operation did: Run becomes a no-op.
func (s *Stack) Release() { s.released = true }

// Run undoes every registered step, newest first, unless Release was called.
// It returns the joined errors of the steps that failed.
func (s *Stack) Run(ctx context.Context) error {
	if s.released {
		return nil
	}
	s.released = true
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), Timeout)
	defer cancel()
	var errs []error
	for i := len(s.steps) - 1; i >= 0; i-- {
		if err := s.steps[i].fn(ctx); err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", s.steps[i].name, err))
		}
	}
	return errors.Join(errs...)
}
