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
// # Crash safety
//
// Operations write a store.Intent before they touch the disk and delete it
// in the transaction that commits their result. At startup Reconcile
// finishes or rolls back each leftover intent, adopts live VMMs (checked by
// pid and start time), marks dead ones Stopped, kills VMMs no record owns
// and removes directories no record owns. See reconcile.go for the rule of
// each operation.
package instances
