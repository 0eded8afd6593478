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

// newRootCmd assembles every verb, in the order `zygote help` lists them.
func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "zygote",
		Short:         "Run microVMs; standby, restore, snapshot and fork them fast",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		// the daemon and what it runs
		newServeCmd(),
		newPagerCmd(),
		newKernelCmd(),
		// instances
		newRunCmd(),
		newPsCmd(),
		newInspectCmd(),
		newLogsCmd(),
		newExecCmd(),
		newCpCmd(),
		newStartCmd(),
		newStopCmd(),
		newStandbyCmd(),
		newRestoreCmd(),
		newForkCmd(),
		newRmCmd(),
		newStatsCmd(),
		newResourcesCmd(),
		// snapshots
		newSnapshotCmd(),
		// images
		newPullCmd(),
		newImagesCmd(),
		newImageCmd(),
		// volumes
		newVolumeCmd(),
	)
	return root
}
