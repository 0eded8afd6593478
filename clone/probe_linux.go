package clone

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Probe tells whether FICLONE works in dir: it creates two temporary files
// there, writes one block, clones it into the other, reads it back, and
// removes both. The error is for a directory it cannot use at all (missing,
// read-only); a filesystem without reflink is a result with Reflink false
// and Err saying why.
func Probe(dir string) (ProbeResult, error) {
	res := ProbeResult{Dir: dir, Filesystem: fsType(dir)}
	a, err := os.CreateTemp(dir, "."+"probe"+tempMarker+"*")
	if err != nil {
		return res, fmt.Errorf("clone: probe reflink in %s: %w", dir, err)
	}
	defer os.Remove(a.Name())
	defer a.Close()
	b, err := os.CreateTemp(dir, "."+"probe"+tempMarker+"*")
	if err != nil {
		return res, fmt.Errorf("clone: probe reflink in %s: %w", dir, err)
	}
	defer os.Remove(b.Name())
	defer b.Close()

	block := bytes.Repeat([]byte("zygote reflink probe\n"), 4096/21+1)[:4096]
	if _, err := a.Write(block); err != nil {
		return res, fmt.Errorf("clone: probe reflink in %s: %w", dir, fsErr("write", a.Name(), err))
	}
	if err := ficlone(b, a); err != nil {
		if !reflinkUnsupported(err) {
			return res, fmt.Errorf("clone: probe reflink in %s: %w", dir, err)
		}
		res.Err = err
		return res, nil
	}
	got := make([]byte, len(block))
	if _, err := b.ReadAt(got, 0); err != nil || !bytes.Equal(got, block) {
		res.Err = errors.Join(errors.New("FICLONE succeeded but the clone reads back different bytes"), err)
		return res, nil
	}
	res.Reflink = true
	return res, nil
}

// fsNames maps statfs magic numbers to the names operators know.
var fsNames = map[int64]string{
	unix.XFS_SUPER_MAGIC:       "xfs",
	unix.BTRFS_SUPER_MAGIC:     "btrfs",
	unix.EXT4_SUPER_MAGIC:      "ext4",
	unix.TMPFS_MAGIC:           "tmpfs",
	unix.OVERLAYFS_SUPER_MAGIC: "overlayfs",
	unix.NFS_SUPER_MAGIC:       "nfs",
	unix.F2FS_SUPER_MAGIC:      "f2fs",
	unix.BCACHEFS_SUPER_MAGIC:  "bcachefs",
	0x2fc12fc1:                 "zfs",
}

func fsName(magic int64) string {
	if name, ok := fsNames[magic]; ok {
		return name
	}
	return fmt.Sprintf("fs-0x%x", magic)
}

// fsType names the filesystem holding path ("unknown" if statfs fails).
func fsType(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "unknown"
	}
	return fsName(st.Type)
}

// fsTypeOf names the filesystem holding an open file.
func fsTypeOf(f *os.File) string {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return "unknown"
	}
	return fsName(st.Type)
}
