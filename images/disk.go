package images

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/zygote/zygote/errdefs"
)

// Root-disk formats.
const (
	// FormatExt4 is built with mkfs.ext4 -d (e2fsprogs); the guest
	// kernel has ext4 built in.
	FormatExt4 = "ext4"
	// FormatErofs is built with mkfs.erofs (erofs-utils); the guest
	// must load erofs.ko (and libcrc32c.ko).
	FormatErofs = "erofs"
)

// diskName is the root disk's file name inside a committed image directory.
func diskName(format string) string { return "rootfs." + format }

// treeUsage is what an ext4 image of a tree needs.
type treeUsage struct {
	blocks int64 // 4 KiB data blocks, hard links counted once
	inodes int64
}

func measureTree(root string) (treeUsage, error) {
	var u treeUsage
	seen := make(map[uint64]bool)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		if st.Nlink > 1 && !d.IsDir() {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		u.inodes++
		switch {
		case d.IsDir():
			u.blocks += 1 + info.Size()/4096
		case info.Mode().IsRegular():
			u.blocks += (info.Size() + 4095) / 4096
			// Extent tree blocks for big files.
			u.blocks += info.Size() / (128 << 20)
		case info.Mode()&fs.ModeSymlink != 0 && info.Size() >= 60:
			u.blocks++
		}
		return nil
	})
	return u, err
}

// buildDisk makes a read-only root disk of format from the tree at src,
// written to out (which must not exist).
func buildDisk(ctx context.Context, format, src, out string) error {
	switch format {
	case FormatExt4:
		return buildExt4(ctx, src, out)
	case FormatErofs:
		return run(ctx, "mkfs.erofs", "--quiet", out, src)
	default:
		return fmt.Errorf("root disk format %q: %w", format, errdefs.ErrInvalidArgument)
	}
}

func buildExt4(ctx context.Context, src, out string) error {
	u, err := measureTree(src)
	if err != nil {
		return fmt.Errorf("measure %s: %w", src, err)
	}
	inodes := u.inodes + u.inodes/10 + 64
	// Data plus 10 % (directories grow, bitmaps, group descriptors), the
	// inode tables at 256 bytes an inode, and a fixed 8 MiB margin.
	size := u.blocks*4096 + u.blocks*4096/10 + inodes*256 + 8<<20
	size = (size + 4<<20 - 1) &^ (4<<20 - 1)
	for attempt := 0; ; attempt++ {
		if err := os.WriteFile(out, nil, 0o644); err != nil {
			return err
		}
		if err := os.Truncate(out, size); err != nil {
			return err
		}
		err := run(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", "-I", "256",
			"-N", strconv.FormatInt(inodes, 10), "-m", "0",
			"-O", "^has_journal,^resize_inode", "-E", "nodiscard,root_owner=0:0",
			"-L", "zygote-root", "-d", src, out)
		// A disk that turned out too small (ENOSPC inside the image,
		// not on the host) is retried once with more room.
		if err != nil && attempt == 0 && !errdefs.IsResourceExhausted(err) &&
			strings.Contains(err.Error(), "Could not allocate block") {
			size = size * 3 / 2
			os.Remove(out)
			continue
		}
		return err
	}
}

// run runs a tool; its error carries stderr. "No space left on device"
// from the tool (the host filesystem filled) is classed
// errdefs.ErrResourceExhausted.
func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	// A daemon killed mid-conversion takes its mkfs with it, so the next
	// Open's sweep of the staging directory races no writer.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", name, ctx.Err())
		}
		if strings.Contains(msg, "No space left on device") {
			return fmt.Errorf("%s: %w: %s", name, errdefs.ErrResourceExhausted, msg)
		}
		return fmt.Errorf("%s: %w: %s", name, err, msg)
	}
	return nil
}

// classify adds errdefs.ErrResourceExhausted to errors caused by a full
// host filesystem.
func classify(err error) error {
	if err == nil || errdefs.IsResourceExhausted(err) {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", errdefs.ErrResourceExhausted, err)
	}
	return err
}
