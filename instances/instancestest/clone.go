package instancestest

import (
	"context"
	"errors"
	"log/slog"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/instances"
)

// Clone is the production clone seam: the clone package, reflink-first
// (without fsync: test data need not survive a power cut).
var Clone instances.Cloner = clone.New(clone.Options{NoSync: true, LinkReadOnly: true, Logger: slog.New(slog.DiscardHandler)})

// NoClone is a fake clone seam for tests that copy nothing: every call
// fails.
var NoClone instances.Cloner = noClone{}

type noClone struct{}

var errNoClone = errors.New("clone not expected in this test")

func (noClone) Dir(context.Context, string, string) (clone.Stats, error) {
	return clone.Stats{}, errNoClone
}

func (noClone) PrepareDensify(context.Context, string) (*clone.Densified, error) {
	return nil, errNoClone
}
