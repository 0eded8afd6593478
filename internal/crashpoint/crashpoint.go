// Package crashpoint is a test hook that makes "the daemon is killed
// exactly here" reproducible: an operation calls Hit at each named point
// between its steps, and when the environment variable ZYGOTE_CRASH_AT
// names that point the process SIGKILLs itself, as `kill -9` would, with
// no deferred function, no cleanup and no flush.
//
// Unset (always, outside tests) Hit costs one string comparison.
package crashpoint

import (
	"os"
	"syscall"
)

// Env names the point to crash at.
const Env = "ZYGOTE_CRASH_AT"

var at = os.Getenv(Env)

// Points, named <operation>:<what is done>.
const (
	CreateDisks        = "create:disks"                 // root disk linked, overlay formatted, no VMM yet
	CreateBooted       = "create:booted"                // VMM running, record not committed
	CreateSlotAcquired = "create:slot-acquired"         // network slot acquired, no VMM, not committed
	StandbySaved       = "standby:saved"                // state file published, VMM alive, not committed
	RestoreOwned       = "restore:owned"                // shared memory file replaced by an own copy, not restored
	RestoreLoaded      = "restore:loaded"               // VMM restored and running, not committed
	ForkLinked         = "fork:linked"                  // a sharing fork's memory linked, not committed
	SnapshotCopied     = "snapshot:copied"              // snapshot directory copied, not committed
	ForkCopied         = "fork:copied"                  // fork directory copied, not committed
	ForkParked         = "fork:parked"                  // running source parked for a fork
	ForkSlotAcquired   = "fork:slot-acquired"           // a fork committed with its network slot, not restored
	SwapMovedAside     = "restore-snapshot:moved-aside" // old directory renamed away
)

// Hit kills the process if ZYGOTE_CRASH_AT is point.
func Hit(point string) {
	if at != "" && at == point {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL cannot be caught; never return
	}
}
