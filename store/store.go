package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/zygote/zygote/errdefs"
)

// Store is the metadata database. It is safe for concurrent use: bbolt
// serialises write transactions and runs read transactions in parallel.
type Store struct {
	db *bolt.DB
}

// Open opens (creating if needed) the database at path and migrates it to
// the current schema. A second daemon on the same data directory fails here
// rather than corrupting state.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: locked by another process (is another zygote daemon using this data directory?): %w", path, errdefs.ErrConflict)
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := migrate(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// View runs fn in a read-only transaction.
func (s *Store) View(fn func(*Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// Update runs fn in a read-write transaction; it commits when fn returns
// nil and rolls back otherwise. Keep fn short: no driver calls inside.
func (s *Store) Update(fn func(*Tx) error) error {
	return s.db.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// Tx is a transaction. Its methods are valid only inside View/Update.
type Tx struct {
	tx *bolt.Tx
}

func getJSON[T any](b *bolt.Bucket, key string, what string) (T, error) {
	var v T
	raw := b.Get([]byte(key))
	if raw == nil {
		return v, fmt.Errorf("%s %q: %w", what, key, errdefs.ErrNotFound)
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, fmt.Errorf("decode %s %q: %w", what, key, err)
	}
	return v, nil
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), raw)
}

func listJSON[T any](b *bolt.Bucket, what string) ([]T, error) {
	var out []T
	err := b.ForEach(func(k, raw []byte) error {
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("decode %s %q: %w", what, k, err)
		}
		out = append(out, v)
		return nil
	})
	return out, err
}

// Instance returns the instance with exactly this id.
func (t *Tx) Instance(id string) (Instance, error) {
	return getJSON[Instance](t.tx.Bucket(bucketInstances), id, "instance")
}

// InstanceByName returns the instance with this name.
func (t *Tx) InstanceByName(name string) (Instance, error) {
	id := t.tx.Bucket(bucketInstanceNames).Get([]byte(name))
	if id == nil {
		return Instance{}, fmt.Errorf("instance named %q: %w", name, errdefs.ErrNotFound)
	}
	return t.Instance(string(id))
}

// Instances returns every instance, oldest first.
func (t *Tx) Instances() ([]Instance, error) {
	out, err := listJSON[Instance](t.tx.Bucket(bucketInstances), "instance")
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, err
}

// NameTaken reports whether an instance other than exceptID holds name.
func (t *Tx) NameTaken(name, exceptID string) bool {
	id := t.tx.Bucket(bucketInstanceNames).Get([]byte(name))
	return id != nil && string(id) != exceptID
}

// PutInstance creates or updates an instance. A name held by another
// instance fails with errdefs.ErrAlreadyExists and writes nothing.
func (t *Tx) PutInstance(inst Instance) error {
	if inst.ID == "" || inst.Name == "" {
		return fmt.Errorf("put instance: id and name are required: %w", errdefs.ErrInvalidArgument)
	}
	if t.NameTaken(inst.Name, inst.ID) {
		return fmt.Errorf("instance name %q is already in use: %w", inst.Name, errdefs.ErrAlreadyExists)
	}
	names := t.tx.Bucket(bucketInstanceNames)
	if old, err := t.Instance(inst.ID); err == nil && old.Name != inst.Name {
		if err := names.Delete([]byte(old.Name)); err != nil {
			return err
		}
	}
	if err := names.Put([]byte(inst.Name), []byte(inst.ID)); err != nil {
		return err
	}
	return putJSON(t.tx.Bucket(bucketInstances), inst.ID, inst)
}

// DeleteInstance removes an instance and frees its name.
func (t *Tx) DeleteInstance(id string) error {
	inst, err := t.Instance(id)
	if err != nil {
		return err
	}
	if err := t.tx.Bucket(bucketInstanceNames).Delete([]byte(inst.Name)); err != nil {
		return err
	}
	return t.tx.Bucket(bucketInstances).Delete([]byte(id))
}

func snapshotNameKey(sourceID, name string) []byte { return []byte(sourceID + "/" + name) }

// Snapshot returns the snapshot with exactly this id.
func (t *Tx) Snapshot(id string) (Snapshot, error) {
	return getJSON[Snapshot](t.tx.Bucket(bucketSnapshots), id, "snapshot")
}

// Snapshots returns every snapshot, oldest first.
func (t *Tx) Snapshots() ([]Snapshot, error) {
	out, err := listJSON[Snapshot](t.tx.Bucket(bucketSnapshots), "snapshot")
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, err
}

// SnapshotNameTaken reports whether a snapshot of sourceID already uses name.
func (t *Tx) SnapshotNameTaken(sourceID, name string) bool {
	return name != "" && t.tx.Bucket(bucketSnapshotNames).Get(snapshotNameKey(sourceID, name)) != nil
}

// ResolveSnapshot finds a snapshot by exact id, exact name, or unique id
// prefix, in that order, as ResolveInstance does for instances. Snapshot
// names are unique per source instance, so a name two instances' snapshots
// share, a prefix matching several ids, or a ref that is one snapshot's id
// and another's name fails with errdefs.ErrAmbiguous.
func (t *Tx) ResolveSnapshot(ref string) (Snapshot, error) {
	if ref == "" {
		return Snapshot{}, fmt.Errorf("empty snapshot reference: %w", errdefs.ErrInvalidArgument)
	}
	named := t.snapshotsNamed(ref)
	if s, err := t.Snapshot(ref); err == nil {
		for _, id := range named {
			if id != s.ID {
				return Snapshot{}, fmt.Errorf("%q is one snapshot's id and another's name: %w", ref, errdefs.ErrAmbiguous)
			}
		}
		return s, nil
	} else if !errdefs.IsNotFound(err) {
		return Snapshot{}, err
	}
	switch len(named) {
	case 0:
	case 1:
		return t.Snapshot(named[0])
	default:
		return Snapshot{}, fmt.Errorf("snapshot %q: %d snapshots (of different instances) have this name, use the id: %w", ref, len(named), errdefs.ErrAmbiguous)
	}
	id, err := uniquePrefix(t.tx.Bucket(bucketSnapshots), ref, "snapshot")
	if err != nil {
		return Snapshot{}, err
	}
	return t.Snapshot(id)
}

// uniquePrefix returns the one key of b (an id) that starts with ref:
// errdefs.ErrNotFound when none does, ErrAmbiguous when several do.
func uniquePrefix(b *bolt.Bucket, ref, what string) (string, error) {
	var match []byte
	c := b.Cursor()
	for k, _ := c.Seek([]byte(ref)); k != nil && strings.HasPrefix(string(k), ref); k, _ = c.Next() {
		if match != nil {
			return "", fmt.Errorf("%s %q: multiple %ss match, use the full id: %w", what, ref, what, errdefs.ErrAmbiguous)
		}
		match = append([]byte(nil), k...)
	}
	if match == nil {
		return "", fmt.Errorf("%s %q: %w", what, ref, errdefs.ErrNotFound)
	}
	return string(match), nil
}

// snapshotsNamed returns the ids of the snapshots named name, of any
// source instance.
func (t *Tx) snapshotsNamed(name string) []string {
	var ids []string
	t.tx.Bucket(bucketSnapshotNames).ForEach(func(k, v []byte) error {
		if _, n, ok := strings.Cut(string(k), "/"); ok && n == name {
			ids = append(ids, string(v))
		}
		return nil
	})
	return ids
}

// PutSnapshot stores a new snapshot. Snapshots are immutable: a second put
// of the same id, or a name the source instance already used, fails.
func (t *Tx) PutSnapshot(s Snapshot) error {
	if s.ID == "" || s.SourceInstanceID == "" {
		return fmt.Errorf("put snapshot: id and source instance are required: %w", errdefs.ErrInvalidArgument)
	}
	b := t.tx.Bucket(bucketSnapshots)
	if b.Get([]byte(s.ID)) != nil {
		return fmt.Errorf("snapshot %s: %w", s.ID, errdefs.ErrAlreadyExists)
	}
	if s.Name != "" {
		if t.SnapshotNameTaken(s.SourceInstanceID, s.Name) {
			return fmt.Errorf("snapshot name %q is already used by instance %s: %w", s.Name, s.SourceInstanceName, errdefs.ErrAlreadyExists)
		}
		if err := t.tx.Bucket(bucketSnapshotNames).Put(snapshotNameKey(s.SourceInstanceID, s.Name), []byte(s.ID)); err != nil {
			return err
		}
	}
	return putJSON(b, s.ID, s)
}

// DeleteSnapshot removes a snapshot and frees its name.
func (t *Tx) DeleteSnapshot(id string) error {
	s, err := t.Snapshot(id)
	if err != nil {
		return err
	}
	if s.Name != "" {
		if err := t.tx.Bucket(bucketSnapshotNames).Delete(snapshotNameKey(s.SourceInstanceID, s.Name)); err != nil {
			return err
		}
	}
	return t.tx.Bucket(bucketSnapshots).Delete([]byte(id))
}

// Intent returns the intent with this id.
func (t *Tx) Intent(id string) (Intent, error) {
	return getJSON[Intent](t.tx.Bucket(bucketIntents), id, "intent")
}

// Intents returns every intent in flight, oldest first.
func (t *Tx) Intents() ([]Intent, error) {
	out, err := listJSON[Intent](t.tx.Bucket(bucketIntents), "intent")
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, err
}

// PutIntent records (or updates) an operation in flight.
func (t *Tx) PutIntent(in Intent) error {
	if in.ID == "" || in.Op == "" {
		return fmt.Errorf("put intent: id and op are required: %w", errdefs.ErrInvalidArgument)
	}
	return putJSON(t.tx.Bucket(bucketIntents), in.ID, in)
}

// DeleteIntent removes an intent; deleting one that is gone is not an error.
func (t *Tx) DeleteIntent(id string) error {
	return t.tx.Bucket(bucketIntents).Delete([]byte(id))
}

// ResolveInstance finds an instance by exact id, exact name, or unique id
// prefix, in that order. A prefix matching several, or a ref that is one
// instance's id and another's name, fails with errdefs.ErrAmbiguous.
func (t *Tx) ResolveInstance(ref string) (Instance, error) {
	if ref == "" {
		return Instance{}, fmt.Errorf("empty instance reference: %w", errdefs.ErrInvalidArgument)
	}
	if inst, err := t.Instance(ref); err == nil {
		if t.NameTaken(ref, inst.ID) {
			return Instance{}, fmt.Errorf("%q is one instance's id and another's name: %w", ref, errdefs.ErrAmbiguous)
		}
		return inst, nil
	} else if !errdefs.IsNotFound(err) {
		return Instance{}, err
	}
	if inst, err := t.InstanceByName(ref); err == nil {
		return inst, nil
	} else if !errdefs.IsNotFound(err) {
		return Instance{}, err
	}
	id, err := uniquePrefix(t.tx.Bucket(bucketInstances), ref, "instance")
	if err != nil {
		return Instance{}, err
	}
	return t.Instance(id)
}
