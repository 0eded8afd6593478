//go:build !linux

package clone

import (
	"context"
	"fmt"

	"github.com/zygote/zygote/errdefs"
)

// The daemon runs on Linux only; elsewhere every operation is refused with
// errdefs.ErrNotImplemented so the client side still builds.

func notLinux(op string) error {
	return fmt.Errorf("clone: %s needs Linux: %w", op, errdefs.ErrNotImplemented)
}

func Dir(ctx context.Context, src, dst string, opts Options) (Stats, error) {
	return Stats{}, notLinux("Dir")
}

func File(ctx context.Context, src, dst string, opts Options) (Stats, error) {
	return Stats{}, notLinux("File")
}

func Probe(dir string) (ProbeResult, error) {
	return ProbeResult{Dir: dir, Err: notLinux("reflink")}, nil
}

func FileLayout(path string) (Layout, error) { return Layout{}, notLinux("FileLayout") }

func Densify(ctx context.Context, path string, opts Options) (DensifyStats, error) {
	return DensifyStats{}, notLinux("Densify")
}

// Densified is a prepared dense copy (Linux only).
type Densified struct{}

func PrepareDensify(ctx context.Context, path string, opts Options) (*Densified, error) {
	return nil, notLinux("PrepareDensify")
}

func (d *Densified) Commit(ctx context.Context) (DensifyStats, error) {
	return DensifyStats{}, notLinux("Densify")
}

func (d *Densified) Abort() {}
