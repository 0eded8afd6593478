package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/internal/bytesize"
)

func newStatsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{Use: "stats NAME|ID", Short: "Print an instance's resource use: VMM CPU time and memory, network traffic", Args: cobra.ExactArgs(1)}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print hypeman's stats object")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		st, err := c.InstanceStats(ctx, args[0])
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(st)
		}
		fmt.Printf("%s  cpu %.2f s  rss %s  vms %s  of %s, %d vcpu  net rx %s tx %s\n", st.InstanceName, st.CPUSeconds,
			bytesize.Format(st.MemoryRSSBytes), bytesize.Format(st.MemoryVMSBytes), bytesize.Format(st.AllocatedMemoryBytes),
			st.AllocatedVCPUs, bytesize.Format(int64(st.NetworkRxBytes)), bytesize.Format(int64(st.NetworkTxBytes)))
		return nil
	})
}

func newResourcesCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{Use: "resources", Short: "Print the host's capacity and what instances hold", Args: cobra.NoArgs}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print hypeman's resources object")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		r, err := c.Resources(ctx)
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(r)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "RESOURCE\tCAPACITY\tALLOCATED\tAVAILABLE")
		fmt.Fprintf(tw, "cpu\t%d\t%d\t%d\n", r.CPU.Capacity, r.CPU.Allocated, r.CPU.Available)
		for _, s := range []struct {
			name              string
			cap, alloc, avail int64
		}{{"memory", r.Memory.Capacity, r.Memory.Allocated, r.Memory.Available}, {"disk", r.Disk.Capacity, r.Disk.Allocated, r.Disk.Available}} {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.name, bytesize.Format(s.cap), bytesize.Format(s.alloc), bytesize.Format(s.avail))
		}
		fmt.Fprintf(tw, "network slots\t\t%d\t\n", r.NetworkSlots)
		return tw.Flush()
	})
}
