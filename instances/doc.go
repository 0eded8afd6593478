// Package instances is the instance manager: it validates requests, runs
// the state machine, serialises operations per instance, journals intents
// and orchestrates drivers, the clone package and the store. It sees only
// the hypervisor contract, never a driver package.
//
// # States
//
// The store keeps one persisted fact per instance (store.PowerState:
// Stopped, Running, Standby). The state a client sees is derived:
//
//	persisted  runtime observation                 API state
//	Stopped    -                                   Stopped
//	Standby    -                                   Standby
//	Running    VMM adopted, agent not yet ready    Initializing
//	Running    agent ready                         Running
//	Running    vCPUs paused by an operation        Paused
//	Running    no VMM handle (before reconcile)    Unknown
//
// Legal transitions (anything else is errdefs.ErrInvalidState, HTTP 409):
//
//	start    Stopped            -> Running
//	stop     Running, Standby   -> Stopped   (from Standby: discards the saved memory)
//	standby  Running            -> Standby
//	restore  Standby            -> Running
//	fork     Stopped, Standby, Running (with from_running) -> new instance
//	delete   any                -> gone
//
// # Concurrency
//
// Lock order, outermost first:
//  1. the per-instance lock (instanceLock), held for a whole operation;
//     an operation on two instances (fork) takes the source's, then the
//     new instance's, which nobody else can see yet;
//  2. Manager.mu, a leaf for the in-memory maps; never held while blocking;
//  3. a store transaction, short, never held across a driver call;
//  4. driver and agent locks, leaves.
//
// Every operation re-reads its instance after taking the lock: the record
// may have changed or gone while it waited.
//
// Each running VM has one watcher goroutine (runtime.go), owned by the
// manager: it connects the guest agent, configures the guest on its first
// boot, tells it about restores, and records an unexpected VMM exit. An
// operation that stops a VMM on purpose first detaches the watcher.
//
// # Operations
//
// Every operation (the API's, and Kill) goes through one runner
// (operation.go): it admits the call (refused once Close has begun),
// validates the request, takes the locks the operation names (instance,
// then snapshot), re-reads the records under them, checks the states the
// operation may run from (409 otherwise), and runs it timed in the
// metrics, its error wrapped with the operation's name. One operation per
// file: create.go, start.go, stop.go, standby.go, restore.go, delete.go,
// fork.go, snapshot_create.go, snapshot_restore.go, snapshot_delete.go,
// kill.go. park.go parks a running source for a copy (fork, snapshot).
// disks.go, workload.go and volumes.go give image instances their disks
// (a hard link to the image's immutable root disk, an own sparse overlay,
// hard links to volumes), their program and its exit semantics.
// states.go holds the states, bringTo (walk an instance to a target state)
// and the 409 error. capacity.go checks a create's guest RAM against the
// host (its memory; the data directory's free space) and declares
// FieldError, a refusal that names its request field.
//
// # Seams
//
// Callers see the manager's own domain types (Instance, Spec, Snapshot,
// SnapshotKind; records.go), never store records: the conversions in
// records.go are the one boundary to the store's records and to the
// snapshot manifest.
//
// The manager sees drivers only through hypervisor.Driver and the optional
// interfaces hypervisor declares (MemoryFiler, AcceleratorReporter,
// MemorySharer, MemoryUsageReporter; sharing.go orchestrates which file
// forks share and who breaks a link, without knowing QEMU); every
// copy and every densify goes through Config.Clone (Cloner), built once by
// the daemon with its clone options (strict mode).
//
// # Crash safety
//
// Operations write a store.Intent before they touch the disk and delete it
// in the transaction that commits their result. At startup Reconcile
// (reconcile.go) runs, for each leftover intent, the recovery rule its
// operation registers in recoveryRules; each rule lives in its operation's
// file, next to the code whose half-done work it finishes, and calls
// nothing in reconcile.go. Then it adopts live VMMs (adopt.go; checked by
// pid and start time), marks dead ones Stopped, kills VMMs no record owns,
// removes directories no record owns in one sweep, and restores sources
// that an interrupted fork or snapshot had parked.
package instances
