package main

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/bytesize"
)

// pollInterval is how often pull asks for the image's state.
const pollInterval = 200 * time.Millisecond

func newPullCmd() *cobra.Command {
	var user string
	var passwordStdin, detach, asJSON bool
	cmd := &cobra.Command{
		Use:   "pull IMAGE",
		Short: "Pull an image from a registry and convert it to a root disk",
		Long: `Pull an image (busybox, docker.io/library/alpine:3.20, host:port/repo:tag,
repo@sha256:…) and wait until it is ready, showing a progress bar (bytes and
layers) on a terminal and one line per step otherwise. Credentials are used
for this pull only and never stored.`,
		Args: cobra.ExactArgs(1),
	}
	cmd.Flags().StringVarP(&user, "username", "u", "", "registry user (basic auth); the password is read from stdin with --password-stdin")
	cmd.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the registry password from stdin")
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "return once the pull is accepted; follow it with zygote images")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the image as JSON")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		req := api.PullImageRequest{Name: args[0]}
		if user != "" || passwordStdin {
			if user == "" || !passwordStdin {
				return fmt.Errorf("--username and --password-stdin go together: %w", errdefs.ErrInvalidArgument)
			}
			pw, err := readPassword(os.Stdin)
			if err != nil {
				return err
			}
			req.Credentials = &api.ImageCredentials{Username: user, Password: pw}
		}
		begin := time.Now()
		img, err := c.PullImage(ctx, req)
		if err != nil {
			return err
		}
		if !detach {
			img, err = followPull(ctx, c, img, os.Stderr, term.IsTerminal(int(os.Stderr.Fd())))
			if err != nil {
				return err
			}
		}
		if asJSON {
			return printJSON(img)
		}
		if detach {
			fmt.Printf("%s  %s\n", img.Name, img.Status)
			return nil
		}
		fmt.Printf("%s  %s  %s  %s\n", img.Name, img.Digest, imageSize(img), seconds(time.Since(begin)))
		return nil
	})
}

// readPassword reads one line from r.
func readPassword(r io.Reader) (string, error) {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read the password from stdin: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return "", fmt.Errorf("--password-stdin: stdin held no password: %w", errdefs.ErrInvalidArgument)
	}
	return pw, nil
}

// followPull polls the image until its pull ends, reporting progress to
// w: a bar redrawn in place when tty, else a line whenever the state or
// the layer count changes. A failed pull is an error carrying the
// daemon's message.
func followPull(ctx context.Context, c *client.Client, img api.Image, w io.Writer, tty bool) (api.Image, error) {
	last := ""
	defer func() {
		if tty && last != "" {
			fmt.Fprint(w, "\r\033[K")
		}
	}()
	for {
		if tty {
			fmt.Fprint(w, "\r\033[K"+progressBar(img))
			last = img.Status
		} else if key := progressKey(img); key != last {
			fmt.Fprintln(w, progressLine(img))
			last = key
		}
		switch img.Status {
		case "ready":
			return img, nil
		case "failed":
			msg := "no reason given"
			if img.Error != nil {
				msg = *img.Error
			}
			return img, fmt.Errorf("pull %s failed: %s", img.Name, msg)
		}
		select {
		case <-ctx.Done():
			return img, fmt.Errorf("stopped following the pull of %s (it goes on in the daemon): %w", img.Name, ctx.Err())
		case <-time.After(pollInterval):
		}
		next, err := c.GetImage(ctx, img.Name)
		if err != nil {
			return img, err
		}
		img = next
	}
}

// barWidth is the progress bar's width in cells.
const barWidth = 24

// progressBar is one terminal line: name, state, a bar of the bytes
// read, the bytes and the layers.
func progressBar(img api.Image) string {
	p := img.Progress
	if p == nil {
		p = &api.ImageProgress{}
	}
	frac := 0.0
	switch {
	case img.Status == "ready" || img.Status == "converting":
		frac = 1
	case p.BytesTotal > 0:
		frac = min(float64(p.BytesDone)/float64(p.BytesTotal), 1)
	}
	fill := int(frac * barWidth)
	bar := strings.Repeat("=", fill)
	if fill < barWidth {
		bar += ">" + strings.Repeat(" ", barWidth-fill-1)
	}
	s := fmt.Sprintf("%s  %-10s [%s] %3d%%  %s / %s  layers %d/%d", img.Name, img.Status, bar, int(frac*100),
		bytesize.Format(p.BytesDone), bytesize.Format(p.BytesTotal), p.LayersDone, p.LayersTotal)
	if img.QueuePosition != nil {
		s += fmt.Sprintf("  queue %d", *img.QueuePosition)
	}
	return s
}

// progressKey changes when a plain-text line is due: a new state, queue
// position or layer count (not every byte).
func progressKey(img api.Image) string {
	k := img.Status
	if img.QueuePosition != nil {
		k += fmt.Sprintf(" q%d", *img.QueuePosition)
	}
	if p := img.Progress; p != nil {
		k += fmt.Sprintf(" %d/%d", p.LayersDone, p.LayersTotal)
	}
	return k
}

// progressLine is the plain-text form, one line per step.
func progressLine(img api.Image) string {
	switch img.Status {
	case "pending":
		if img.QueuePosition != nil {
			return fmt.Sprintf("%s: pending, queue position %d", img.Name, *img.QueuePosition)
		}
		return img.Name + ": pending"
	case "pulling":
		p := img.Progress
		if p == nil {
			return img.Name + ": pulling"
		}
		return fmt.Sprintf("%s: pulling, layers %d/%d, %s of %s", img.Name, p.LayersDone, p.LayersTotal,
			bytesize.Format(p.BytesDone), bytesize.Format(p.BytesTotal))
	case "ready":
		return fmt.Sprintf("%s: ready, %s", img.Name, imageSize(img))
	}
	return img.Name + ": " + img.Status
}

func imageSize(img api.Image) string {
	if img.SizeBytes == nil {
		return "-"
	}
	return bytesize.Format(*img.SizeBytes)
}

func shortDigest(d string) string {
	if h, ok := strings.CutPrefix(d, "sha256:"); ok && len(h) >= 12 {
		return h[:12]
	}
	return orDash(d)
}

func newImagesCmd() *cobra.Command {
	cmd := newImageLsCmd()
	cmd.Use = "images"
	return cmd
}

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "OCI images: list, inspect, remove, import",
	}
	cmd.AddCommand(newImageLsCmd(), newImageInspectCmd(), newImageRmCmd(), newImageImportCmd())
	return cmd
}

func newImageLsCmd() *cobra.Command {
	var asJSON, quiet bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List images: ready ones, and pulls running or failed (`image inspect` says why one failed)",
		Args:  cobra.NoArgs,
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the images as JSON")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print names only")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		list, err := c.ListImages(ctx)
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(list)
		}
		if quiet {
			for _, img := range list {
				fmt.Println(img.Name)
			}
			return nil
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSTATUS\tDIGEST\tSIZE\tCREATED")
		for _, img := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", img.Name, img.Status, shortDigest(img.Digest), imageSize(img), age(img.CreatedAt))
		}
		return tw.Flush()
	})
}

func newImageInspectCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inspect IMAGE",
		Short: "Print an image (by name or digest) as JSON",
		Args:  cobra.ExactArgs(1),
	}
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		img, err := c.GetImage(ctx, args[0])
		if err != nil {
			return err
		}
		return printJSON(img)
	})
}

func newImageRmCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rm IMAGE...",
		Short: "Remove images (refused while instances or snapshots use them, or while pulled)",
		Args:  cobra.MinimumNArgs(1),
	}
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		var errs []error
		for _, ref := range args {
			if err := c.DeleteImage(ctx, ref); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", ref, err))
				continue
			}
			fmt.Println(ref)
		}
		return errors.Join(errs...)
	})
}

func newImageImportCmd() *cobra.Command {
	var name string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "import FILE|DIR|- [--name REF]",
		Short: "Import an image from a docker save tar, an OCI archive or an OCI layout directory",
		Long: `Import an image from a file: a 'docker save' tar (gzip-compressed or not), an
OCI layout packed in a tar, or an OCI layout directory (packed on the fly);
'-' reads the archive from stdin. The archive is streamed to the daemon, which
converts it and answers when the image is ready. Without --name the image
keeps the name the archive records.`,
		Args: cobra.ExactArgs(1),
	}
	cmd.Flags().StringVar(&name, "name", "", "reference to store the image as (default: the one the archive records)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the image as JSON")
	return clientCommand(cmd, func(ctx context.Context, c *client.Client, args []string) error {
		archive, err := openArchive(args[0])
		if err != nil {
			return err
		}
		defer archive.Close()
		begin := time.Now()
		p := startProgress("import " + args[0])
		img, err := c.ImportImage(ctx, archive, name)
		p.Stop()
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(img)
		}
		fmt.Printf("%s  %s  %s  %s\n", img.Name, img.Digest, imageSize(img), seconds(time.Since(begin)))
		return nil
	})
}

// openArchive opens what import streams: a file as it is (gunzipped if
// compressed), stdin for "-", or an OCI layout directory packed as a tar.
func openArchive(path string) (io.ReadCloser, error) {
	if path == "-" {
		return maybeGunzip(io.NopCloser(os.Stdin))
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	if st.IsDir() {
		if _, err := os.Stat(filepath.Join(path, "oci-layout")); err != nil {
			return nil, fmt.Errorf("import %s: a directory must be an OCI layout (it has no oci-layout file): %w", path, errdefs.ErrInvalidArgument)
		}
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(tarDir(path, pw)) }() // owner: the pipe; ends when the tar is written or the reader closes
		return pr, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return maybeGunzip(f)
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r readCloser) Close() error { return r.close() }

// maybeGunzip decompresses a gzip stream (docker save | gzip) and passes
// anything else through.
func maybeGunzip(rc io.ReadCloser) (io.ReadCloser, error) {
	br := bufio.NewReader(rc)
	magic, _ := br.Peek(2)
	if len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			rc.Close()
			return nil, fmt.Errorf("import: %w", err)
		}
		return readCloser{zr, rc.Close}, nil
	}
	return readCloser{br, rc.Close}, nil
}

// tarDir writes the regular files and directories under dir as a tar
// (paths relative to dir): an OCI layout holds nothing else.
func tarDir(dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !info.Mode().IsRegular() && !info.IsDir() {
			return fmt.Errorf("import %s: %s is neither a file nor a directory: %w", dir, rel, errdefs.ErrInvalidArgument)
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.IsDir() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
