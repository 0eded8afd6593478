// Package bytesize parses and prints byte sizes the way hypeman's API does
// (c2h5oh/datasize): binary units, "256MB" = 256 MiB, printed with one
// decimal and the largest unit the value strictly exceeds ("1024.0 MB" for
// exactly 1 GiB).
package bytesize

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/zygote/zygote/errdefs"
)

var units = []struct {
	suffix string
	shift  uint
}{
	{"B", 0}, {"K", 10}, {"KB", 10}, {"M", 20}, {"MB", 20}, {"G", 30}, {"GB", 30}, {"T", 40}, {"TB", 40},
}

// Parse reads a size such as "256MB", "1GB", "2G", "512 mb" or "1048576"
// (bytes). Decimals and "GiB"-style suffixes are refused, as hypeman does.
func Parse(s string) (int64, error) {
	in := strings.ToUpper(strings.TrimSpace(s))
	i := 0
	for i < len(in) && in[i] >= '0' && in[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q: want a whole number with an optional unit (B, KB, MB, GB, TB): %w", s, errdefs.ErrInvalidArgument)
	}
	n, err := strconv.ParseInt(in[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, errdefs.ErrInvalidArgument)
	}
	suffix := strings.TrimSpace(in[i:])
	if suffix == "" {
		return n, nil
	}
	for _, u := range units {
		if suffix == u.suffix {
			if n > (1<<62)>>u.shift {
				return 0, fmt.Errorf("size %q is too large: %w", s, errdefs.ErrInvalidArgument)
			}
			return n << u.shift, nil
		}
	}
	return 0, fmt.Errorf("size %q: unknown unit %q (use B, KB, MB, GB or TB, binary): %w", s, suffix, errdefs.ErrInvalidArgument)
}

// Format prints n in hypeman's human-readable form.
func Format(n int64) string {
	names := []string{"B", "KB", "MB", "GB", "TB", "PB"}
	f := float64(n)
	i := 0
	for i < len(names)-1 && f > 1024 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", f, names[i])
}
