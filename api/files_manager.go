package api

import (
	"context"
	"io"

	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/guest/agentproto"
	"github.com/zygote/zygote/instances"
)

// GuestFileManager is what the exec/cp session bound and the file routes
// (cp.go, stat.go) ask of the instance manager. The API's Manager
// interface embeds it; *instances.Manager implements it.
type GuestFileManager interface {
	// OpenSession admits one exec or cp session (429 past the bound);
	// call the returned func when it ends.
	OpenSession(ctx context.Context, ref string) (instances.Instance, func(), error)
	Stat(ctx context.Context, ref, path string, followLinks bool) (agentproto.PathInfo, error)
	CopyFrom(ctx context.Context, ref string, req agentproto.CopyFromRequest, fn agent.CopyFromFunc) (int64, error)
	CopyTo(ctx context.Context, ref string, req agentproto.CopyToRequest, r io.Reader) (int64, error)
}

var _ GuestFileManager = (*instances.Manager)(nil)
