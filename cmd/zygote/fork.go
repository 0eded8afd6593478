package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
)

// forkFlags are shared by `fork` and `snapshot fork`.
type forkFlags struct {
	target string
	memory string
	count  int
	asJSON bool
}

func (f *forkFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.target, "target-state", "", "Running, Standby or Stopped (default: the source's state; for a snapshot, Running or Stopped by kind)")
	cmd.Flags().StringVar(&f.memory, "memory", "", "shared: the forks share the source's parked memory file (copy-on-write; N forks cost about one); owned: each fork its own copy (default: the daemon's)")
	cmd.Flags().IntVar(&f.count, "count", 0, "make COUNT forks named NAME-1..NAME-COUNT, parking the source once")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print the forks as JSON")
}

// run calls one or batch and prints the result.
func (f *forkFlags) run(what string, one func() (api.Instance, error), batch func() ([]api.Instance, error)) error {
	begin := time.Now()
	p := startProgress("fork " + what)
	var forks []api.Instance
	var err error
	if f.count > 0 {
		forks, err = batch()
	} else {
		var in api.Instance
		in, err = one()
		forks = []api.Instance{in}
	}
	p.Stop()
	if err != nil {
		return err
	}
	if f.asJSON {
		if f.count > 0 {
			return printJSON(forks)
		}
		return printJSON(forks[0])
	}
	took := seconds(time.Since(begin))
	for _, in := range forks {
		fmt.Println(statusLine(in, took))
	}
	return nil
}

func newForkCmd() *cobra.Command {
	var ff forkFlags
	var fromRunning bool
	cmd := &cobra.Command{
		Use:   "fork SOURCE NAME [--from-running] [--target-state S] [--count N] [--memory shared|owned]",
		Short: "Make a new instance from an instance; it owns a copy of every file (or shares the parked memory file, immutable, with --memory shared)",
		Example: `  zygote fork web web-2 --from-running
  zygote fork web worker --count 8 --target-state Standby`,
		Args: cobra.ExactArgs(2),
	}
	ff.add(cmd)
	cmd.Flags().BoolVar(&fromRunning, "from-running", false, "allow a Running source: park it, copy it, restore it")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		req := api.ForkInstanceRequest{FromRunning: fromRunning, TargetState: ff.target, Memory: ff.memory}
		if ff.count > 0 {
			req.NamePrefix, req.Count = args[1], ff.count
		} else {
			req.Name = args[1]
		}
		return ff.run(args[0],
			func() (api.Instance, error) { return c.ForkInstance(ctx, args[0], req) },
			func() ([]api.Instance, error) { return c.ForkInstanceBatch(ctx, args[0], req) })
	})
}

func newSnapshotForkCmd() *cobra.Command {
	var ff forkFlags
	cmd := &cobra.Command{
		Use:   "fork SNAPSHOT NAME [--target-state S] [--count N] [--memory shared|owned]",
		Short: "Make a new instance from a snapshot",
		Args:  cobra.ExactArgs(2),
	}
	ff.add(cmd)
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		req := api.ForkSnapshotRequest{TargetState: ff.target, Memory: ff.memory}
		if ff.count > 0 {
			req.NamePrefix, req.Count = args[1], ff.count
		} else {
			req.Name = args[1]
		}
		return ff.run(args[0],
			func() (api.Instance, error) { return c.ForkSnapshot(ctx, args[0], req) },
			func() ([]api.Instance, error) { return c.ForkSnapshotBatch(ctx, args[0], req) })
	})
}
