// Command zygote is the zygote daemon (`zygote serve`), its pager
// (`zygote pager`) and the CLI client for everything else.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := newRootCmd()
	if err := root.Execute(); err != nil {
		var ec exitCodeError
		if errors.As(err, &ec) {
			os.Exit(ec.code)
		}
		fmt.Fprintln(os.Stderr, "zygote:", err)
		os.Exit(1)
	}
}

// exitCodeError carries a process exit code (from `exec`) through cobra
// without printing anything.
type exitCodeError struct{ code int }

func (e exitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "zygote",
		Short:         "Run microVMs; standby, restore, snapshot and fork them fast",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	for _, newCmd := range subcommands {
		root.AddCommand(newCmd())
	}
	return root
}

// subcommands collects the verbs; each verb's file appends its constructor
// in an init func, so verbs live in separate files without editing this one.
var subcommands []func() *cobra.Command
