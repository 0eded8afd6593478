package snapshots

import (
	"os"
	"syscall"
)

// allocatedBytes is what a file occupies on disk (holes excluded).
func allocatedBytes(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
