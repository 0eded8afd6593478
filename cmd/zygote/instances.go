package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
)

func randomName() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 4)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return "vm-" + string(b)
}

func newRunCmd() *cobra.Command {
	var (
		name, hv, kernelArgs, memory string
		vcpus                        int
		env, tags, publish           []string
		detach, asJSON, noNetwork    bool
	)
	cmd := &cobra.Command{
		Use:   "run [flags] [-- COMMAND [ARG...]]",
		Short: "Create and boot a VM, and wait until its guest agent is ready",
		Example: `  zygote run --name web
  zygote run --name big --memory 1GB
  zygote run --name job --memory 512 -- sh -c 'while true; do date; sleep 1; done'`,
	}
	cmd.Flags().StringVar(&name, "name", "", "instance name (default: a random vm-xxxx)")
	cmd.Flags().StringVar(&memory, "memory", "", `guest RAM: a size with binary units ("512MB", "1GB", "2G") or a number of MiB ("512"); default 256MB`)
	cmd.Flags().IntVar(&vcpus, "vcpus", 0, "virtual CPUs (default 1)")
	cmd.Flags().StringVar(&hv, "hypervisor", "", "qemu or qemu-microvm (default: the daemon's)")
	cmd.Flags().StringVar(&kernelArgs, "kernel-args", "", "extra guest kernel command line")
	cmd.Flags().StringArrayVarP(&env, "env", "e", nil, "workload environment KEY=VALUE (repeatable)")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "tag KEY=VALUE (repeatable)")
	cmd.Flags().StringArrayVarP(&publish, "publish", "p", nil, "publish a guest port on a host port: HOST:GUEST[/tcp|udp] (repeatable)")
	cmd.Flags().BoolVar(&noNetwork, "no-network", false, "no network: the guest has only lo")
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "return once the VMM runs, without waiting for the guest")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the instance as JSON")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		envMap, err := parseKV(env, "env")
		if err != nil {
			return err
		}
		tagMap, err := parseKV(tags, "tag")
		if err != nil {
			return err
		}
		if name == "" {
			name = randomName()
		}
		req := api.CreateInstanceRequest{Name: name, VCPUs: vcpus, Hypervisor: hv, KernelArgs: kernelArgs, Env: envMap, Tags: tagMap, Cmd: args}
		req.Size = memorySize(memory)
		if req.Publish, err = parsePublish(publish); err != nil {
			return err
		}
		if noNetwork {
			off := false
			req.Network = &api.NetworkRequest{Enabled: &off}
		}
		begin := time.Now()
		p := startProgress("booting " + name)
		in, err := c.CreateInstance(ctx, req)
		p.Stop()
		if err != nil {
			return err
		}
		if !detach {
			if in, err = waitRunning(ctx, c, in.ID, "booting "+name); err != nil {
				return err
			}
		}
		if asJSON {
			return printJSON(in)
		}
		suffix := ""
		if !detach {
			suffix = "ready in " + seconds(time.Since(begin))
		}
		fmt.Println(statusLine(in, suffix))
		return nil
	})
}

// memorySize turns --memory into the API's size string: a plain number
// is MiB (the flag's old unit), anything else goes as written and the
// daemon parses it (hypeman's size strings).
func memorySize(v string) string {
	v = strings.TrimSpace(v)
	if v != "" && strings.Trim(v, "0123456789") == "" {
		return v + "MB"
	}
	return v
}

func newPsCmd() *cobra.Command {
	var all, asJSON bool
	var state string
	var tags []string
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List instances (without -a: all but Stopped ones)",
		Args:  cobra.NoArgs,
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "include stopped instances")
	cmd.Flags().StringVar(&state, "state", "", "only instances in this state")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "only instances with tag KEY=VALUE (repeatable)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		tagMap, err := parseKV(tags, "tag")
		if err != nil {
			return err
		}
		list, err := c.ListInstances(ctx, client.ListOptions{State: state, Tags: tagMap})
		if err != nil {
			return err
		}
		shown := []api.Instance{}
		for _, in := range list {
			if all || state != "" || in.State != "Stopped" {
				shown = append(shown, in)
			}
		}
		if asJSON {
			return printJSON(shown)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSTATE\tHYPERVISOR\tMEMORY\tFORKED FROM\tAGE\tID")
		for _, in := range shown {
			from := ""
			if in.ForkedFrom != nil {
				from = in.ForkedFrom.InstanceName
				if from == "" {
					from = "snapshot " + shortID(in.ForkedFrom.SnapshotID)
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", in.Name, in.State, hypervisorLabel(in), memoryLabel(in), from, age(in.CreatedAt), shortID(in.ID))
		}
		return tw.Flush()
	})
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func newInspectCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inspect NAME|ID...",
		Short: "Print instances as JSON",
		Args:  cobra.MinimumNArgs(1),
	}
	cmd.Flags().Bool("json", true, "print JSON (always on; accepted for symmetry)")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		var out []api.Instance
		for _, ref := range args {
			in, err := c.GetInstance(ctx, ref)
			if err != nil {
				return err
			}
			out = append(out, in)
		}
		if len(out) == 1 {
			return printJSON(out[0])
		}
		return printJSON(out)
	})
}

// lifecycleCmd builds start/stop/standby/restore: call, optionally wait
// for Running, print the status line with the time taken.
func lifecycleCmd(use, short string, call func(*client.Client, context.Context, string) (api.Instance, error), waitForRunning bool) func() *cobra.Command {
	return func() *cobra.Command {
		var asJSON bool
		cmd := &cobra.Command{Use: use + " NAME|ID...", Short: short, Args: cobra.MinimumNArgs(1)}
		cmd.Flags().BoolVar(&asJSON, "json", false, "print the instance as JSON")
		return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
			for _, ref := range args {
				begin := time.Now()
				p := startProgress(use + " " + ref)
				in, err := call(c, ctx, ref)
				p.Stop()
				if err != nil {
					return err
				}
				if waitForRunning {
					if in, err = waitRunning(ctx, c, in.ID, use+" "+ref); err != nil {
						return err
					}
				}
				if asJSON {
					if err := printJSON(in); err != nil {
						return err
					}
					continue
				}
				fmt.Println(statusLine(in, seconds(time.Since(begin))))
			}
			return nil
		})
	}
}

var (
	newStartCmd   = lifecycleCmd("start", "Boot stopped instances and wait until they are ready", (*client.Client).StartInstance, true)
	newStopCmd    = lifecycleCmd("stop", "Shut instances down (a standby instance: discard its saved memory)", (*client.Client).StopInstance, false)
	newStandbyCmd = lifecycleCmd("standby", "Park running instances: save device state, stop the VMM, keep memory on disk", (*client.Client).StandbyInstance, false)
	newRestoreCmd = lifecycleCmd("restore", "Resume standby instances where they stopped", (*client.Client).RestoreInstance, false)
)

func newRmCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm [-f] NAME|ID...",
		Short: "Delete instances (a running one needs -f, which also skips the graceful shutdown)",
		Args:  cobra.MinimumNArgs(1),
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "delete running instances too, killing their VMM at once")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		var failed error
		for _, ref := range args {
			if !force {
				in, err := c.GetInstance(ctx, ref)
				if err != nil {
					fmt.Fprintln(os.Stderr, "zygote:", err)
					failed = err
					continue
				}
				if in.State != "Stopped" && in.State != "Standby" {
					failed = fmt.Errorf("instance %s is %s: stop it first or use rm -f", in.Name, in.State)
					fmt.Fprintln(os.Stderr, "zygote:", failed)
					continue
				}
			}
			if err := c.DeleteInstance(ctx, ref, force); err != nil {
				fmt.Fprintln(os.Stderr, "zygote:", err)
				failed = err
				continue
			}
			fmt.Println(ref)
		}
		if failed != nil {
			return exitCodeError{code: 1}
		}
		return nil
	})
}
