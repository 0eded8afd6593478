//go:build !linux

package testutil

import "testing"

// LoopFS describes a filesystem image; loop mounts exist only on Linux.
type LoopFS struct {
	Type     string
	Size     int64
	MkfsArgs []string
}

func skipNotLinux(t testing.TB, what string) string {
	t.Helper()
	skipOrFail(t, what+" needs Linux")
	return ""
}

func MountLoop(t testing.TB, spec LoopFS) string { return skipNotLinux(t, "a loop mount") }
func XFS(t testing.TB) string                    { return skipNotLinux(t, "XFS") }
func SharedXFS(t testing.TB) string              { return skipNotLinux(t, "XFS") }
func Btrfs(t testing.TB) string                  { return skipNotLinux(t, "btrfs") }
func Tmpfs(t testing.TB, size int64) string      { return skipNotLinux(t, "tmpfs") }
func Ext4Dir(t testing.TB) string                { return skipNotLinux(t, "ext4") }
