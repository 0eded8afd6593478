//go:build !linux

package snapshots

import "os"

// allocatedBytes is what a file occupies on disk. Without Linux's block
// count it is the file's size: holes are not seen.
func allocatedBytes(fi os.FileInfo) int64 { return fi.Size() }
