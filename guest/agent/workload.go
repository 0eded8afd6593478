package agent

import (
	"context"
	"fmt"

	"github.com/zygote/zygote/guest/agentproto"
)

// WaitWorkload blocks until the boot's workload exits and returns its exit
// status (code, or 128+n and the signal name when killed by signal n). It
// returns at once if the workload already exited, and fails with
// errdefs.ErrNotFound when this boot has no workload. Cancel ctx to stop
// waiting; the connection breaking fails it with ErrConnectionLost, and a
// reconnecting host learns of an exit it missed from Hello().Workload.
func (c *Client) WaitWorkload(ctx context.Context) (agentproto.ExitStatus, error) {
	resp, err := c.call(ctx, agentproto.Request{Op: agentproto.OpWaitWorkload})
	if err != nil {
		return agentproto.ExitStatus{}, err
	}
	if resp.Workload == nil || resp.Workload.Exited == nil {
		return agentproto.ExitStatus{}, fmt.Errorf("agent wait workload: no exit status from the guest")
	}
	return *resp.Workload.Exited, nil
}
