package instances

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/guest/agentproto"
)

// FileAgent is the optional part of Agent that moves files (the guest
// agent's stat, copy_from and copy_to ops). An Agent without it makes the
// file operations fail with errdefs.ErrNotImplemented.
type FileAgent interface {
	Stat(ctx context.Context, path string, followLinks bool) (agentproto.PathInfo, error)
	CopyFrom(ctx context.Context, req agentproto.CopyFromRequest, fn agent.CopyFromFunc) (int64, error)
	CopyTo(ctx context.Context, req agentproto.CopyToRequest, r io.Reader) (int64, error)
}

// readyAgent returns the guest agent of the instance ref names once it
// answers, waiting up to wait for a booting guest (as Exec does).
func (m *Manager) readyAgent(ctx context.Context, ref string, wait time.Duration) (Agent, error) {
	v, err := m.ExecTarget(ctx, ref)
	if err != nil {
		return nil, err
	}
	rt := m.runtimeOf(v.ID)
	if rt == nil {
		return nil, fmt.Errorf("instance %s has no running VMM: %w", v.Name, errdefs.ErrInvalidState)
	}
	wctx, cancel := context.WithTimeout(ctx, max(wait, time.Millisecond))
	defer cancel()
	return rt.waitAgent(wctx)
}

func (m *Manager) fileAgent(ctx context.Context, ref string) (FileAgent, error) {
	ag, err := m.readyAgent(ctx, ref, m.cfg.ReadyTimeout)
	if err != nil {
		return nil, err
	}
	fa, ok := ag.(FileAgent)
	if !ok {
		return nil, fmt.Errorf("the guest agent of %s cannot copy files: %w", ref, errdefs.ErrNotImplemented)
	}
	return fa, nil
}

// Stat describes a path in the guest of a running instance.
func (m *Manager) Stat(ctx context.Context, ref, path string, followLinks bool) (agentproto.PathInfo, error) {
	fa, err := m.fileAgent(ctx, ref)
	if err != nil {
		return agentproto.PathInfo{}, err
	}
	return fa.Stat(ctx, path, followLinks)
}

// CopyFrom streams a tree out of the guest of a running instance (see
// agent.Client.CopyFrom).
func (m *Manager) CopyFrom(ctx context.Context, ref string, req agentproto.CopyFromRequest, fn agent.CopyFromFunc) (int64, error) {
	fa, err := m.fileAgent(ctx, ref)
	if err != nil {
		return 0, err
	}
	return fa.CopyFrom(ctx, req, fn)
}

// CopyTo creates one entry in the guest of a running instance (see
// agent.Client.CopyTo).
func (m *Manager) CopyTo(ctx context.Context, ref string, req agentproto.CopyToRequest, r io.Reader) (int64, error) {
	fa, err := m.fileAgent(ctx, ref)
	if err != nil {
		return 0, err
	}
	return fa.CopyTo(ctx, req, r)
}

var _ FileAgent = (*agent.Client)(nil)
