package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/bytesize"
)

func newVolumeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "volume",
		Short: "Named data disks that image instances attach (run --volume NAME:/path[:ro])",
		Long: `Volumes are sparse ext4 disks under the data directory. An image instance
attaches them at create (zygote run --volume NAME:/path[:ro]); a writable
volume has one instance at a time and its data outlives the instance;
read-only attachments are shared. An instance with a writable volume cannot
be forked or snapshotted.`,
	}
	cmd.AddCommand(newVolumeCreateCmd(), newVolumeLsCmd(), newVolumeInspectCmd(), newVolumeRmCmd())
	return cmd
}

func newVolumeCreateCmd() *cobra.Command {
	var size int64
	var tags []string
	var asJSON bool
	cmd := &cobra.Command{Use: "create NAME [--size-gb N]", Short: "Create a volume (sparse: it costs what is written)", Args: cobra.ExactArgs(1)}
	cmd.Flags().Int64Var(&size, "size-gb", 1, "size in GiB")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "tag KEY=VALUE (repeatable)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		tagMap, err := parseKV(tags, "tag")
		if err != nil {
			return err
		}
		v, err := c.CreateVolume(ctx, api.CreateVolumeRequest{Name: args[0], SizeGB: size, Tags: tagMap})
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(v)
		}
		fmt.Println(v.ID)
		return nil
	})
}

func newVolumeLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{Use: "ls", Aliases: []string{"list"}, Short: "List volumes", Args: cobra.NoArgs}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		list, err := c.ListVolumes(ctx)
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(list)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tSIZE\tAGE")
		for _, v := range list {
			created, _ := time.Parse(time.RFC3339Nano, v.CreatedAt)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.ID, v.Name, bytesize.Format(v.SizeBytes), age(created))
		}
		return tw.Flush()
	})
}

func newVolumeInspectCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "inspect VOLUME", Short: "Print a volume (id or name) as JSON", Args: cobra.ExactArgs(1)}
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		v, err := c.GetVolume(ctx, args[0])
		if err != nil {
			return err
		}
		return printJSON(v)
	})
}

func newVolumeRmCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "rm VOLUME...", Short: "Delete volumes no instance attaches", Args: cobra.MinimumNArgs(1)}
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		for _, ref := range args {
			if err := c.DeleteVolume(ctx, ref); err != nil {
				return err
			}
			fmt.Println(ref)
		}
		return nil
	})
}

// parseVolumeFlags reads run's --volume NAME:/path[:ro|:rw].
func parseVolumeFlags(flags []string) ([]api.VolumeMount, error) {
	var out []api.VolumeMount
	for _, f := range flags {
		parts := strings.Split(f, ":")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
			return nil, fmt.Errorf("--volume %q: want NAME:/path[:ro]: %w", f, errdefs.ErrInvalidArgument)
		}
		m := api.VolumeMount{VolumeID: parts[0], MountPath: parts[1]}
		if len(parts) == 3 {
			switch parts[2] {
			case "ro":
				m.ReadOnly = true
			case "rw":
			default:
				return nil, fmt.Errorf("--volume %q: mode %q: want ro or rw: %w", f, parts[2], errdefs.ErrInvalidArgument)
			}
		}
		out = append(out, m)
	}
	return out, nil
}
