package store

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// migration moves the schema from version-1 to version. Migrations run in
// order, each in the one transaction that also bumps schema_version, so a
// crash leaves the database at the old or the new version.
type migration struct {
	version uint64
	name    string
	apply   func(tx *bolt.Tx) error
}

// migrations must stay sorted by version; each has a test in
// migrations_test.go.
var migrations = []migration{
	{version: 1, name: "create buckets", apply: func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketInstances, bucketInstanceNames, bucketSnapshots, bucketSnapshotNames, bucketIntents} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}},
}

// SchemaVersion is the version this binary writes.
func SchemaVersion() uint64 { return migrations[len(migrations)-1].version }

func migrate(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		var current uint64
		if v := meta.Get(keySchemaVersion); len(v) == 8 {
			current = binary.BigEndian.Uint64(v)
		}
		if current > SchemaVersion() {
			return fmt.Errorf("database schema version %d is newer than this binary's %d: refusing to open it", current, SchemaVersion())
		}
		for _, m := range migrations {
			if m.version <= current {
				continue
			}
			if err := m.apply(tx); err != nil {
				return fmt.Errorf("migration %d (%s): %w", m.version, m.name, err)
			}
			current = m.version
		}
		return meta.Put(keySchemaVersion, binary.BigEndian.AppendUint64(nil, current))
	})
}
