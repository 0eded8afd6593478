package client

import (
	"context"

	"github.com/zygote/zygote/api"
)

// InstanceStats returns an instance's resource use.
func (c *Client) InstanceStats(ctx context.Context, ref string) (api.InstanceStats, error) {
	var out api.InstanceStats
	return out, c.do(ctx, "GET", "/instances/"+esc(ref)+"/stats", nil, &out)
}

// Resources returns the host's capacity and the instances' allocations.
func (c *Client) Resources(ctx context.Context) (api.Resources, error) {
	var out api.Resources
	return out, c.do(ctx, "GET", "/resources", nil, &out)
}
