// Package logfile keeps log files of processes that may print forever (a
// guest's console, a VMM's stderr) within a fixed size.
//
// A Writer appends to a file and, when the next write would take it past
// Limits.MaxBytes, renames it to its first rotated name ("console.log" →
// "console.1.log", shifting older ones) and starts a new file; at most
// Limits.Files files exist, so the disk used stays below MaxBytes × Files.
// CapAppended does the same for a file another process holds open with
// O_APPEND (QEMU's stderr), by copying it aside and truncating it in place.
//
// Readers that follow a log (api/logs.go) notice a rotation as a new inode
// at the path, and a CapAppended as a file shorter than their offset.
//
// Rotated names keep the ".log" extension, so the clone package's default
// skip rule leaves them out of copies, like the live file.
package logfile
