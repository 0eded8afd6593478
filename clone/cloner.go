package clone

import (
	"context"
	"io/fs"
	"slices"
)

// Cloner is the package bound to one set of Options. The daemon builds one
// from its configuration (strict mode, logger) and hands the same value to
// every caller, so no copy — a directory, a file or a densify — runs with
// options of its own: --reflink-strict means strict everywhere.
type Cloner struct{ opts Options }

// New returns a Cloner that passes opts to every call.
func New(opts Options) *Cloner { return &Cloner{opts: opts} }

// Options are the options every call of c uses.
func (c *Cloner) Options() Options { return c.opts }

// Dir is Dir with c's options.
func (c *Cloner) Dir(ctx context.Context, src, dst string) (Stats, error) {
	return Dir(ctx, src, dst, c.opts)
}

// File is File with c's options.
func (c *Cloner) File(ctx context.Context, src, dst string) (Stats, error) {
	return File(ctx, src, dst, c.opts)
}

// PrepareDensify is PrepareDensify with c's options.
func (c *Cloner) PrepareDensify(ctx context.Context, path string) (*Densified, error) {
	return PrepareDensify(ctx, path, c.opts)
}

// DirExcept is Dir with c's options, also leaving out the top-level
// entries named in except (a sharing fork's memory file, which the caller
// links instead of copying).
func (c *Cloner) DirExcept(ctx context.Context, src, dst string, except ...string) (Stats, error) {
	opts := c.opts
	skip := opts.Skip
	if skip == nil {
		skip = DefaultSkip
	}
	opts.Skip = func(rel string, d fs.DirEntry) bool { return slices.Contains(except, rel) || skip(rel, d) }
	return Dir(ctx, src, dst, opts)
}
