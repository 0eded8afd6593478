package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/zygote/zygote/api/client"
)

// newCpCmd is `zygote cp`, docker cp's rules over the cp WebSocket.
func newCpCmd() *cobra.Command {
	var archive, followLinks, quiet bool
	cmd := &cobra.Command{
		Use:   "cp [-a] [-L] SRC DST",
		Short: "Copy files and directories between the host and a running guest",
		Long: `Copy files and directories between the host and a running guest, with
docker cp's rules. One side is NAME:PATH (PATH absolute in the guest), the
other a host path. A file goes to DST, or into DST when it is a directory;
a directory becomes DST when DST does not exist, else goes into it; SRC
ending in /. copies only the directory's contents. Modes, mtimes and
symlinks (as links, never followed) are kept; owners with -a. A host path
that starts with /, ./, ../ or ~ is always local.`,
		Args: cobra.ExactArgs(2),
		Example: `  zygote cp ./site web:/srv/www
  zygote cp web:/var/log/app.log .
  zygote cp web:/etc/. ./guest-etc`,
	}
	cmd.Flags().BoolVarP(&archive, "archive", "a", false, "keep owners (uid/gid)")
	cmd.Flags().BoolVarP(&followLinks, "follow-link", "L", false, "copy what a source symlink points to")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print no summary")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		srcName, srcPath, srcRemote := parseCpArg(args[0])
		dstName, dstPath, dstRemote := parseCpArg(args[1])
		opt := client.CopyOptions{Archive: archive, FollowLinks: followLinks}
		var st client.CopyStats
		var err error
		switch {
		case srcRemote && dstRemote:
			return fmt.Errorf("cp: copying between two guests is not supported; one side must be a host path")
		case !srcRemote && !dstRemote:
			return fmt.Errorf("cp: one side must be NAME:PATH")
		case srcRemote:
			st, err = c.CopyFromGuest(ctx, srcName, srcPath, dstPath, opt)
		default:
			st, err = c.CopyToGuest(ctx, dstName, srcPath, dstPath, opt)
		}
		if err != nil {
			return err
		}
		if !quiet {
			fmt.Fprintf(os.Stderr, "copied %d entries, %d bytes\n", st.Entries, st.Bytes)
		}
		return nil
	})
}

// parseCpArg splits NAME:PATH. Paths that start with /, ./, ../ or ~ (and
// . and ..) are host paths even with a colon; so is anything whose part
// before the first colon contains a slash.
func parseCpArg(arg string) (name, path string, remote bool) {
	if strings.HasPrefix(arg, "/") || strings.HasPrefix(arg, "./") || strings.HasPrefix(arg, "../") ||
		strings.HasPrefix(arg, "~") || arg == "." || arg == ".." {
		return "", arg, false
	}
	name, path, ok := strings.Cut(arg, ":")
	if !ok || name == "" || strings.Contains(name, "/") {
		return "", arg, false
	}
	if path == "" {
		path = "/"
	}
	return name, path, true
}
