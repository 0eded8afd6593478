//go:build !linux

package pagerclient

import (
	"fmt"

	"github.com/zygote/zygote/errdefs"
)

func adopt(pid int) (*proc, error) {
	return nil, fmt.Errorf("adopting a running pager needs pidfds (Linux): %w", errdefs.ErrNotImplemented)
}
