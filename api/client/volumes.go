package client

import (
	"context"

	"github.com/zygote/zygote/api"
)

// CreateVolume makes a volume (POST /volumes).
func (c *Client) CreateVolume(ctx context.Context, req api.CreateVolumeRequest) (api.Volume, error) {
	var out api.Volume
	return out, c.do(ctx, "POST", "/volumes", req, &out)
}

// ListVolumes lists every volume.
func (c *Client) ListVolumes(ctx context.Context) ([]api.Volume, error) {
	var out []api.Volume
	return out, c.do(ctx, "GET", "/volumes", nil, &out)
}

// GetVolume resolves a volume id or name.
func (c *Client) GetVolume(ctx context.Context, ref string) (api.Volume, error) {
	var out api.Volume
	return out, c.do(ctx, "GET", "/volumes/"+esc(ref), nil, &out)
}

// DeleteVolume deletes a volume no instance attaches.
func (c *Client) DeleteVolume(ctx context.Context, ref string) error {
	return c.do(ctx, "DELETE", "/volumes/"+esc(ref), nil, nil)
}
