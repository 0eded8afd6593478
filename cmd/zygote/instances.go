package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/errdefs"
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
		entrypoint, overlaySize      string
		vcpus                        int
		env, tags, vols, publish     []string
		detach, asJSON, noNetwork    bool
		allowPeers                   bool
	)
	cmd := &cobra.Command{
		Use:   "run [flags] [IMAGE] [-- COMMAND [ARG...]]",
		Short: "Create and boot a VM from an OCI image (or the built-in guest) and run its program",
		Long: `Create and boot a VM.

With IMAGE (an OCI reference; pulled first if the daemon does not have it),
the VM boots the image's read-only root disk plus its own writable overlay
disk and runs the image's entrypoint + cmd; what follows -- replaces the
image's cmd (docker's rules), --entrypoint its entrypoint. run then follows
the program's output until it exits and exits with its exit code; with -d it
returns once the VM runs and the program keeps running (zygote logs -f,
zygote exec). A program that cannot start fails the run at once (127: not
found, 126: not executable).

Without IMAGE, the VM boots zygote's built-in busybox guest; what follows --
is its workload, and run returns once the guest agent is ready.`,
		Example: `  zygote run --name web
  zygote run 127.0.0.1:5000/debian:bookworm -- python3 -c 'print(6*7)'
  zygote run -d --name py 127.0.0.1:5000/debian:bookworm -- sleep infinity
  zygote run --name job --memory 512 -- sh -c 'while true; do date; sleep 1; done'`,
	}
	cmd.Flags().StringVar(&name, "name", "", "instance name (default: a random vm-xxxx)")
	cmd.Flags().StringVar(&memory, "memory", "", `guest RAM: a size with binary units ("512MB", "1GB", "2G") or a number of MiB ("512"); default 256MB`)
	cmd.Flags().IntVar(&vcpus, "vcpus", 0, "virtual CPUs (default 1)")
	cmd.Flags().StringVar(&hv, "hypervisor", "", "qemu or qemu-microvm (default: the daemon's)")
	cmd.Flags().StringVar(&kernelArgs, "kernel-args", "", "extra guest kernel command line")
	cmd.Flags().StringArrayVarP(&env, "env", "e", nil, "workload environment KEY=VALUE (repeatable; laid over the image's)")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "tag KEY=VALUE (repeatable)")
	cmd.Flags().StringVar(&entrypoint, "entrypoint", "", "replace the image's entrypoint (and drop its cmd unless -- gives one)")
	cmd.Flags().StringVar(&overlaySize, "overlay-size", "", `the image instance's writable overlay disk (sparse), e.g. "1GB"; default 10GB`)
	cmd.Flags().StringArrayVarP(&vols, "volume", "v", nil, "attach a volume: NAME:/path[:ro] (repeatable; image instances only)")
	cmd.Flags().StringArrayVarP(&publish, "publish", "p", nil, "publish a guest port on a host port: HOST:GUEST[/tcp|udp] (repeatable)")
	cmd.Flags().BoolVar(&noNetwork, "no-network", false, "no network: the guest has only lo")
	cmd.Flags().BoolVar(&allowPeers, "allow-peers", false, "let the guest talk to other guests that allow peers (inherited by its forks)")
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "return once the VMM runs, without waiting for the guest or following the program")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the instance as JSON")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		image, command, err := splitRunArgs(args, cmd.ArgsLenAtDash())
		if err != nil {
			return err
		}
		envMap, err := parseKV(env, "env")
		if err != nil {
			return err
		}
		tagMap, err := parseKV(tags, "tag")
		if err != nil {
			return err
		}
		mounts, err := parseVolumeFlags(vols)
		if err != nil {
			return err
		}
		if name == "" {
			name = randomName()
		}
		req := api.CreateInstanceRequest{Volumes: mounts, Name: name, VCPUs: vcpus, Hypervisor: hv, KernelArgs: kernelArgs, Env: envMap, Tags: tagMap,
			Image: image, Cmd: command, OverlaySize: overlaySize}
		if cmd.Flags().Changed("entrypoint") {
			req.Entrypoint = strings.Fields(entrypoint)
			if req.Entrypoint == nil {
				req.Entrypoint = []string{}
			}
		}
		req.Size = memorySize(memory)
		if req.Publish, err = parsePublish(publish); err != nil {
			return err
		}
		req.Network = networkFlags(noNetwork, allowPeers)
		begin := time.Now()
		what := "booting " + name
		if image != "" {
			what = "pulling " + image + " (if needed) and booting " + name
		}
		p := startProgress(what)
		in, err := c.CreateInstance(ctx, req)
		p.Stop()
		if err != nil {
			return err
		}
		if image != "" && !detach && !asJSON {
			return followProgram(ctx, c, in, begin)
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

// splitRunArgs reads run's positionals: at most one IMAGE before "--",
// the command after it.
func splitRunArgs(args []string, dash int) (image string, command []string, err error) {
	before := args
	if dash >= 0 {
		before, command = args[:dash], args[dash:]
	}
	switch len(before) {
	case 0:
	case 1:
		image = before[0]
	default:
		return "", nil, fmt.Errorf("run takes one IMAGE; put the command after --: zygote run IMAGE -- %s: %w",
			strings.Join(before[1:], " "), errdefs.ErrInvalidArgument)
	}
	if len(command) == 0 {
		command = nil
	}
	return image, command, nil
}

// followProgram streams an image instance's program output (the app log,
// without zygote-init's own lines) until the program exits, then returns
// its exit code as the command's.
func followProgram(ctx context.Context, c *client.Client, in api.Instance, begin time.Time) error {
	lctx, stopLogs := context.WithCancel(ctx)
	defer stopLogs()
	logsDone := make(chan error, 1)
	go func() { // owner: followProgram, which cancels and waits for it
		logsDone <- c.Logs(lctx, in.ID, client.LogOptions{Follow: true, Tail: 100000}, programOutput{os.Stdout})
	}()
	for {
		res, err := c.WaitForState(ctx, in.ID, "Stopped", 5*time.Minute)
		if err != nil {
			return err
		}
		if res.State == "Stopped" || res.State == "Unknown" {
			break
		}
	}
	time.Sleep(300 * time.Millisecond) // the last lines of the console
	stopLogs()
	<-logsDone
	out, err := c.GetInstance(ctx, in.ID)
	if err != nil {
		return err
	}
	if out.ExitCode == nil {
		return fmt.Errorf("instance %s stopped without a program exit: %s", in.Name, out.ExitMessage)
	}
	if *out.ExitCode != 0 {
		fmt.Fprintf(os.Stderr, "zygote: %s: %s (after %s)\n", in.Name, out.ExitMessage, seconds(time.Since(begin)))
		return exitCodeError{code: *out.ExitCode}
	}
	return nil
}

// programOutput drops zygote-init's own log lines and the kernel's
// ("[    6.50] reboot: Power down") from the guest console; client.Logs
// writes one line per call.
type programOutput struct{ w io.Writer }

var kernelLine = regexp.MustCompile(`^\[\s*[0-9]+\.[0-9]+\] `)

func (p programOutput) Write(b []byte) (int, error) {
	if bytes.Contains(b, []byte("component=zygote-init")) || kernelLine.Match(b) {
		return len(b), nil
	}
	return p.w.Write(b)
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
