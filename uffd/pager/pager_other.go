//go:build !linux

package pager

import (
	"context"
	"fmt"

	"github.com/zygote/zygote/errdefs"
)

// Run is `zygote pager`; userfaultfd exists only on Linux.
func Run(ctx context.Context, cfg Config) error {
	return fmt.Errorf("pager: userfaultfd needs Linux: %w", errdefs.ErrNotImplemented)
}
