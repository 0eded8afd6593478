package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/zygote/zygote/api/client"
)

// execFailed is the exit code when exec itself fails (as docker's 125),
// so scripts can tell it from the command's own codes.
const execFailed = 125

func newExecCmd() *cobra.Command {
	var (
		interactive bool
		tty         bool
		env         []string
		cwd         string
		timeout     int32
	)
	cmd := &cobra.Command{
		Use:   "exec [-i] [-t] NAME|ID -- COMMAND [ARG...]",
		Short: "Run a command in a running guest; its exit code becomes zygote's",
		Args:  cobra.MinimumNArgs(2),
		Example: `  zygote exec web -- sh -c 'echo hello > /dev/shm/note'
  echo data | zygote exec -i web -- cat
  zygote exec -it web -- sh`,
	}
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "stream stdin to the command")
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "run the command on a terminal of this terminal's size (raw mode here, resizes follow)")
	cmd.Flags().StringArrayVarP(&env, "env", "e", nil, "environment KEY=VALUE (repeatable)")
	cmd.Flags().StringVar(&cwd, "cwd", "", "working directory in the guest")
	cmd.Flags().Int32Var(&timeout, "timeout", 0, "kill the command after this many seconds (0: never)")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		envMap, err := parseKV(env, "env")
		if err != nil {
			return err
		}
		opt := client.ExecOptions{Command: args[1:], Env: envMap, Cwd: cwd, Timeout: timeout, WaitForAgent: 60,
			Stdout: os.Stdout, Stderr: os.Stderr}
		if interactive {
			opt.Stdin = os.Stdin
		}
		restore := func() {}
		if tty {
			if restore, err = setupTTY(&opt, interactive); err != nil {
				return err
			}
			defer restore()
		}
		code, err := c.Exec(ctx, args[0], opt)
		restore() // before printing: a raw terminal has no output processing
		if err != nil {
			fmt.Fprintln(os.Stderr, "zygote:", err)
			return exitCodeError{code: execFailed}
		}
		if code != 0 {
			return exitCodeError{code: code}
		}
		return nil
	})
}

func newLogsCmd() *cobra.Command {
	var (
		follow bool
		tail   int
		source string
	)
	cmd := &cobra.Command{
		Use:   "logs [-f] NAME|ID",
		Short: "Print an instance's guest console (or, with --source vmm, the VMM's output)",
		Args:  cobra.ExactArgs(1),
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep streaming new lines")
	cmd.Flags().IntVarP(&tail, "tail", "n", 100, "lines from the end to start with")
	cmd.Flags().StringVar(&source, "source", "app", "app (guest console) or vmm")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		return c.Logs(ctx, args[0], client.LogOptions{Follow: follow, Tail: tail, Source: source}, os.Stdout)
	})
}
