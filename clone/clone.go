package clone

import (
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/zygote/zygote/errdefs"
)

// Strategy names how file data reached the copy. It is the value of the
// log field clone_strategy and the label the caller puts on its metric.
type Strategy string

const (
	// StrategyNone: no file data was copied: no regular files, or only
	// empty and all-hole files on a filesystem without reflink.
	StrategyNone Strategy = "none"
	// StrategyReflink: every file was cloned with FICLONE; the copy shares
	// the source's blocks until either side writes (copy-on-write).
	StrategyReflink Strategy = "reflink"
	// StrategyCopyFileRange: data segments copied in the kernel with
	// copy_file_range, holes skipped (SEEK_DATA/SEEK_HOLE).
	StrategyCopyFileRange Strategy = "copy_file_range"
	// StrategyReadWrite: data segments copied with pread/pwrite, holes
	// skipped; used when copy_file_range is refused (another filesystem).
	StrategyReadWrite Strategy = "readwrite"
	// StrategyMixed: files of one tree took different paths.
	StrategyMixed Strategy = "mixed"
)

// EnvStrict is the environment variable that turns strict mode on for the
// daemon: ZYGOTE_REFLINK_STRICT=1.
const EnvStrict = "ZYGOTE_REFLINK_STRICT"

// Options tune one Dir or File call. The zero value is the default: reflink
// with a sparse-copy fallback, the default skip rules, fsync on, logs to
// slog.Default().
type Options struct {
	// Strict refuses the fallback: a file that cannot be reflinked fails
	// the whole call with a *ReflinkRequiredError (errdefs.ErrNotImplemented)
	// and nothing is left behind. The package never reads the environment
	// itself; the daemon sets Strict = config || StrictFromEnv().
	Strict bool
	// Skip decides which entries of a tree Dir leaves out; rel is the path
	// relative to the source root with "/" separators. A skipped directory
	// is not descended. nil means DefaultSkip. Dir cannot copy sockets,
	// named pipes or devices: Skip must leave them out.
	Skip func(rel string, d fs.DirEntry) bool
	// NoSync skips the fsync of files and directories. Only for callers
	// that make the result durable another way, or do not need it to be
	// (benchmarks, scratch copies): without fsync a crash can leave a
	// visible but incomplete copy.
	NoSync bool
	// LinkReadOnly makes Dir hard-link, instead of copy, every regular file
	// whose mode has no write bit (0444, 0555, …): files that are immutable
	// by rule (an image's root disk, the guest kernel and initramfs), which
	// every copy may share — DESIGN invariant 1 allows a hard link to an
	// immutable file. A link across filesystems (EXDEV) falls back to a
	// copy. Whoever makes a file read-only promises never to write it in
	// place again.
	LinkReadOnly bool
	// Logger receives one Info line per call (field clone_strategy) and a
	// Warn line when a filesystem refuses reflink. nil means slog.Default().
	Logger *slog.Logger
}

// Stats reports what a Dir or File call did. The caller turns it into
// metrics (the package does not import a metrics library).
type Stats struct {
	// Strategy is the path the file data took; see the constants.
	Strategy Strategy
	// Filesystem is the type of the destination's filesystem ("xfs").
	Filesystem string
	// Files, Dirs and Symlinks count what was created (Dirs includes the
	// root); Skipped counts entries left out by Options.Skip.
	Files, Dirs, Symlinks, Skipped int
	// Linked counts read-only files hard-linked (Options.LinkReadOnly);
	// they are not in Files or Bytes.
	Linked int
	// Bytes is the apparent size of the regular files copied.
	Bytes int64
	// ReflinkedBytes is the apparent size of the files cloned with FICLONE.
	ReflinkedBytes int64
	// CopiedBytes is the data actually copied by the fallback paths.
	CopiedBytes int64
	// HoleBytes is the part of fallback-copied files left as holes (not
	// read, not written). Reflinked files keep their holes too; they are
	// not counted here.
	HoleBytes int64
	// Duration is the wall time of the call.
	Duration time.Duration
}

// ProbeResult says whether FICLONE works in a directory; the daemon logs
// it at start.
type ProbeResult struct {
	Dir string
	// Filesystem is the directory's filesystem type ("xfs", "ext4").
	Filesystem string
	// Reflink is true when a test file was cloned there.
	Reflink bool
	// Err is why reflink is unavailable (nil when Reflink is true).
	Err error
}

// String is the daemon's startup line.
func (p ProbeResult) String() string {
	if p.Reflink {
		return fmt.Sprintf("reflink works in %s (%s): forks and snapshots share blocks (copy cost grows with extents, not size)", p.Dir, p.Filesystem)
	}
	return fmt.Sprintf("reflink unavailable in %s (%s: %v): forks and snapshots fall back to a sparse full copy (cost grows with data size); "+
		"put the data directory on XFS (mkfs.xfs -m reflink=1) or btrfs; strict mode (%s=1) refuses the fallback", p.Dir, p.Filesystem, p.Err, EnvStrict)
}

// ReflinkRequiredError is the strict-mode failure: a file could not be
// reflinked and Options.Strict refused the fallback. It matches
// errdefs.ErrNotImplemented (the API maps it to 501) and the errno FICLONE
// returned.
type ReflinkRequiredError struct {
	// Path is the source file.
	Path string
	// SrcFilesystem and DstFilesystem are the filesystem types of the
	// source and the destination.
	SrcFilesystem, DstFilesystem string
	// Err is what FICLONE returned (EOPNOTSUPP, EXDEV, ...).
	Err error
}

func (e *ReflinkRequiredError) Error() string {
	where := e.DstFilesystem
	if e.SrcFilesystem != e.DstFilesystem {
		where = fmt.Sprintf("%s to %s", e.SrcFilesystem, e.DstFilesystem)
	}
	return fmt.Sprintf("clone %s: reflink (FICLONE) failed on %s: %v; strict mode refuses the sparse-copy fallback: "+
		"put the data directory on XFS (mkfs.xfs -m reflink=1) or btrfs with source and copy on the same filesystem, or unset %s",
		e.Path, where, e.Err, EnvStrict)
}

// Unwrap lets errors.Is match both errdefs.ErrNotImplemented and the errno.
func (e *ReflinkRequiredError) Unwrap() []error {
	return []error{errdefs.ErrNotImplemented, e.Err}
}

// Layout is how a file's data sits on disk.
type Layout struct {
	// Extents is the FIEMAP extent count: a reflink copy of the file costs
	// time in proportion to it (about 25 µs each on XFS here), not to the
	// file's size.
	Extents int
	// DataSegments is the number of runs of data between holes
	// (SEEK_DATA/SEEK_HOLE): the fewest extents the file can have while its
	// holes stay holes, so what Densify brings Extents down to.
	DataSegments int
}

// Fragmented reports whether Densify would pay off: copy-on-write writes
// have split the data into at least twice as many extents as it has data
// segments, and by more than 256 extents (about 6 ms of reflink time), so
// small files are never rewritten for nothing.
func (l Layout) Fragmented() bool {
	return l.Extents > 2*l.DataSegments && l.Extents-l.DataSegments > 256
}

// DensifyStats reports a Densify call.
type DensifyStats struct {
	// Before and After are the file's layout around the rewrite.
	Before, After Layout
	// CopiedBytes is the data rewritten; holes are not.
	CopiedBytes int64
	Duration    time.Duration
}

// StrictFromEnv reports whether ZYGOTE_REFLINK_STRICT asks for strict mode.
// Unset or empty is false; anything strconv.ParseBool does not accept is an
// error (errdefs.ErrInvalidArgument), so a typo does not silently disable
// strict mode.
func StrictFromEnv() (bool, error) {
	v := os.Getenv(EnvStrict)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s=%q: want 1 or 0: %w", EnvStrict, v, errdefs.ErrInvalidArgument)
	}
	return b, nil
}

// tempMarker is in the name of every temporary this package creates next to
// its destination (staging trees and files, densify copies).
const tempMarker = ".zygote-tmp-"

// IsTempName reports whether a directory entry name is one of this
// package's temporaries: a staging copy or a densify file left by a crash.
// The daemon's startup reconcile removes them; DefaultSkip never copies
// them.
func IsTempName(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, tempMarker)
}

// DefaultSkip leaves out what must not travel with a copy of an instance:
// sockets and named pipes (endpoints of live processes), *.pid, *.log and
// *.sock files, and this package's own temporaries.
func DefaultSkip(rel string, d fs.DirEntry) bool {
	if d.Type()&(fs.ModeSocket|fs.ModeNamedPipe) != 0 || IsTempName(d.Name()) {
		return true
	}
	if d.IsDir() {
		return false
	}
	switch path.Ext(d.Name()) {
	case ".pid", ".log", ".sock":
		return true
	}
	return false
}

// strategyOf folds the set of per-file strategies into one.
func strategyOf(used map[Strategy]bool) Strategy {
	if len(used) == 0 {
		return StrategyNone
	}
	if len(used) > 1 {
		return StrategyMixed
	}
	for s := range used {
		return s
	}
	return StrategyNone
}
