package instances

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/internal/bytesize"
)

// FieldError is a request field the manager refused; Field is its wire
// name ("size"), so the API can answer with hypeman's per-field code
// ("invalid_size"). The class (errors.Is) is Err's.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Capacity is what the host can give one instance.
type Capacity struct {
	// MemoryBytes is the host's physical memory (MemTotal).
	MemoryBytes int64
	// DiskFreeBytes is what the data directory's filesystem has free for
	// an unprivileged writer.
	DiskFreeBytes int64
}

// hostCapacity reads the host's memory and the data directory's free
// space.
func hostCapacity(dataDir string) (Capacity, error) {
	var c Capacity
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return c, fmt.Errorf("read host memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return c, fmt.Errorf("read host memory: MemTotal %q: %w", rest, err)
			}
			c.MemoryBytes = kb << 10
		}
	}
	if c.MemoryBytes == 0 {
		return c, fmt.Errorf("read host memory: no MemTotal in /proc/meminfo")
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dataDir, &st); err != nil {
		return c, fmt.Errorf("free space of the data directory: %w", err)
	}
	c.DiskFreeBytes = int64(st.Bavail) * int64(st.Bsize)
	return c, nil
}

// checkMemory refuses guest RAM the host cannot give: more than its
// physical memory (400 invalid_size), or a memory file larger than the
// data directory's free space (507 insufficient_resources; guest RAM is a
// file in the instance directory, and a standby writes it out).
func checkMemory(bytes int64, c Capacity) error {
	if bytes > c.MemoryBytes {
		return &FieldError{Field: "size", Err: fmt.Errorf("size %s is more than the host's memory (%s): %w",
			bytesize.Format(bytes), bytesize.Format(c.MemoryBytes), errdefs.ErrInvalidArgument)}
	}
	if bytes > c.DiskFreeBytes {
		return &FieldError{Field: "size", Err: fmt.Errorf("size %s needs a memory file of that size, and the data directory has %s free: %w",
			bytesize.Format(bytes), bytesize.Format(c.DiskFreeBytes), errdefs.ErrResourceExhausted)}
	}
	return nil
}
