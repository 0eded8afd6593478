package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/internal/bytesize"
)

func newSnapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Named, immutable, fully owned copies of instances",
	}
	cmd.AddCommand(
		newSnapshotCreateCmd(),
		newSnapshotLsCmd(),
		newSnapshotInspectCmd(),
		newSnapshotRmCmd(),
		newSnapshotForkCmd(),
		newSnapshotRestoreCmd(),
	)
	return cmd
}

func snapshotName(s api.Snapshot) string {
	if s.Name != nil {
		return *s.Name
	}
	return ""
}

func newSnapshotCreateCmd() *cobra.Command {
	var kind, name string
	var tags []string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "create INSTANCE [--name NAME] [--kind Standby|Stopped]",
		Short: "Snapshot an instance (a running one is parked, copied and restored)",
		Args:  cobra.ExactArgs(1),
	}
	cmd.Flags().StringVar(&kind, "kind", "Standby", "Standby (memory, device state and disks) or Stopped (disks only; the instance must be stopped)")
	cmd.Flags().StringVar(&name, "name", "", "snapshot name, unique per instance; other snapshot verbs take it in place of the id")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "tag KEY=VALUE (repeatable)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the snapshot as JSON")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		tagMap, err := parseKV(tags, "tag")
		if err != nil {
			return err
		}
		begin := time.Now()
		p := startProgress("snapshot " + args[0])
		s, err := c.CreateSnapshot(ctx, args[0], api.CreateSnapshotRequest{Kind: kind, Name: name, Tags: tagMap})
		p.Stop()
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(s)
		}
		fmt.Printf("%s  %s  %s of %s  %s  %s\n", s.ID, orDash(snapshotName(s)), s.Kind, s.SourceInstanceName, bytesize.Format(s.SizeBytes), seconds(time.Since(begin)))
		return nil
	})
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newSnapshotLsCmd() *cobra.Command {
	var instance, kind, name string
	var tags []string
	var asJSON bool
	cmd := &cobra.Command{Use: "ls", Aliases: []string{"list"}, Short: "List snapshots", Args: cobra.NoArgs}
	cmd.Flags().StringVar(&instance, "instance", "", "only snapshots of this instance (id, name or prefix)")
	cmd.Flags().StringVar(&kind, "kind", "", "only Standby or Stopped snapshots")
	cmd.Flags().StringVar(&name, "name", "", "only snapshots with this name")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "only snapshots with tag KEY=VALUE (repeatable)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		tagMap, err := parseKV(tags, "tag")
		if err != nil {
			return err
		}
		opt := client.SnapshotListOptions{Kind: kind, Name: name, Tags: tagMap}
		if instance != "" {
			in, err := c.GetInstance(ctx, instance)
			if err != nil {
				return err
			}
			opt.SourceInstanceID = in.ID
		}
		list, err := c.ListSnapshots(ctx, opt)
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(list)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tKIND\tSOURCE\tSIZE\tAGE")
		for _, s := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, orDash(snapshotName(s)), s.Kind, s.SourceInstanceName, bytesize.Format(s.SizeBytes), age(s.CreatedAt))
		}
		return tw.Flush()
	})
}

func newSnapshotInspectCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "inspect SNAPSHOT", Short: "Print a snapshot (id, name or unique id prefix) as JSON", Args: cobra.ExactArgs(1)}
	cmd.Flags().Bool("json", true, "print JSON (always on)")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		s, err := c.GetSnapshot(ctx, args[0])
		if err != nil {
			return err
		}
		return printJSON(s)
	})
}

func newSnapshotRmCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "rm SNAPSHOT...", Short: "Delete snapshots by id, name or unique id prefix (forks and sources are untouched)", Args: cobra.MinimumNArgs(1)}
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		for _, id := range args {
			if err := c.DeleteSnapshot(ctx, id); err != nil {
				return err
			}
			fmt.Println(id)
		}
		return nil
	})
}

func newSnapshotRestoreCmd() *cobra.Command {
	var target string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "restore INSTANCE SNAPSHOT [--target-state S]",
		Short: "Replace a (not running) instance's state with one of its snapshots",
		Args:  cobra.ExactArgs(2),
	}
	cmd.Flags().StringVar(&target, "target-state", "", "Running, Standby or Stopped (default: Running for a Standby snapshot, Stopped for a Stopped one)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the instance as JSON")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		begin := time.Now()
		p := startProgress("restore " + args[0])
		in, err := c.RestoreSnapshot(ctx, args[0], args[1], api.RestoreSnapshotRequest{TargetState: target})
		p.Stop()
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(in)
		}
		fmt.Println(statusLine(in, seconds(time.Since(begin))))
		return nil
	})
}
