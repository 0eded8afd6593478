// Package store persists zygote's metadata in an embedded transactional
// database (bbolt): instances, snapshots and the intents of operations in
// flight. It is the daemon's memory across crashes and upgrades.
//
// Schema (bucket tree, version 1):
//
//	meta/
//	  schema_version         -> big-endian uint64
//	instances/
//	  <instance id>          -> JSON Instance
//	instance_names/
//	  <name>                 -> <instance id>       (unique across the host)
//	snapshots/
//	  <snapshot id>          -> JSON Snapshot
//	snapshot_names/
//	  <source id>/<name>     -> <snapshot id>       (unique per source instance)
//	intents/
//	  <intent id>            -> JSON Intent         (operations in flight)
//
// Contract:
//   - A record is visible only once committed; uniqueness of names is
//     enforced inside the same write transaction that writes the record.
//   - Records never hold paths. Every directory is derived from an id by the
//     caller, so no record can point into another resource's directory
//     (DESIGN invariant 1).
//   - An intent is written before an operation touches the filesystem and
//     deleted in the transaction that commits the operation's result; the
//     startup reconcile finishes or rolls back whatever intents it finds.
//   - Never call a driver, the network or anything slow inside a
//     transaction: write transactions serialise the whole daemon.
package store

var (
	bucketMeta          = []byte("meta")
	bucketInstances     = []byte("instances")
	bucketInstanceNames = []byte("instance_names")
	bucketSnapshots     = []byte("snapshots")
	bucketSnapshotNames = []byte("snapshot_names")
	bucketIntents       = []byte("intents")

	keySchemaVersion = []byte("schema_version")
)
