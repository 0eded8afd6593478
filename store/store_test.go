package store

import (
	"encoding/binary"
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/zygote/zygote/errdefs"
)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "db")
	s, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func put(t *testing.T, s *Store, inst Instance) error {
	t.Helper()
	return s.Update(func(tx *Tx) error { return tx.PutInstance(inst) })
}

func TestInstanceNamesAreUnique(t *testing.T) {
	s, _ := openTemp(t)
	now := time.Now()
	if err := put(t, s, Instance{ID: "aaaa", Name: "web", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	err := put(t, s, Instance{ID: "bbbb", Name: "web", CreatedAt: now})
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("second instance named web: err = %v, want AlreadyExists", err)
	}
	// The failed put changed nothing.
	s.View(func(tx *Tx) error {
		if _, err := tx.Instance("bbbb"); !errdefs.IsNotFound(err) {
			t.Errorf("bbbb exists after a failed put: %v", err)
		}
		return nil
	})
	// Renaming frees the old name.
	if err := put(t, s, Instance{ID: "aaaa", Name: "web2", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := put(t, s, Instance{ID: "bbbb", Name: "web", CreatedAt: now}); err != nil {
		t.Fatalf("name freed by rename is still taken: %v", err)
	}
	// Deleting frees the name too.
	if err := s.Update(func(tx *Tx) error { return tx.DeleteInstance("bbbb") }); err != nil {
		t.Fatal(err)
	}
	if err := put(t, s, Instance{ID: "cccc", Name: "web", CreatedAt: now}); err != nil {
		t.Fatalf("name freed by delete is still taken: %v", err)
	}
}

func TestResolveInstance(t *testing.T) {
	s, _ := openTemp(t)
	for _, inst := range []Instance{
		{ID: "abc111", Name: "one"},
		{ID: "abc222", Name: "two"},
		{ID: "xyz333", Name: "abc111x"},
		{ID: "dup", Name: "d1"},
		{ID: "qqq444", Name: "dup"},
	} {
		if err := put(t, s, inst); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		ref    string
		wantID string
		class  error
	}{
		{ref: "abc111", wantID: "abc111"},
		{ref: "two", wantID: "abc222"},
		{ref: "abc2", wantID: "abc222"},
		{ref: "xyz", wantID: "xyz333"},
		{ref: "abc111x", wantID: "xyz333"},        // exact name beats prefix
		{ref: "dup", class: errdefs.ErrAmbiguous}, // one's id, another's name
		{ref: "abc", class: errdefs.ErrAmbiguous},
		{ref: "nope", class: errdefs.ErrNotFound},
		{ref: "", class: errdefs.ErrInvalidArgument},
	} {
		var got Instance
		err := s.View(func(tx *Tx) (err error) { got, err = tx.ResolveInstance(tc.ref); return })
		if tc.class != nil {
			if !errors.Is(err, tc.class) {
				t.Errorf("Resolve(%q) err = %v, want %v", tc.ref, err, tc.class)
			}
			continue
		}
		if err != nil || got.ID != tc.wantID {
			t.Errorf("Resolve(%q) = %q, %v; want %q", tc.ref, got.ID, err, tc.wantID)
		}
	}
}

func TestSnapshotNamesUniquePerSource(t *testing.T) {
	s, _ := openTemp(t)
	snap := func(id, src, name string) Snapshot {
		return Snapshot{ID: id, SourceInstanceID: src, SourceInstanceName: src, Name: name, Kind: SnapshotStandby}
	}
	putSnap := func(sn Snapshot) error { return s.Update(func(tx *Tx) error { return tx.PutSnapshot(sn) }) }
	if err := putSnap(snap("s1", "i1", "base")); err != nil {
		t.Fatal(err)
	}
	if err := putSnap(snap("s2", "i1", "base")); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("duplicate name on one source: %v, want AlreadyExists", err)
	}
	if err := putSnap(snap("s3", "i2", "base")); err != nil {
		t.Fatalf("same name on another source: %v", err)
	}
	if err := putSnap(snap("s1", "i9", "other")); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("snapshot overwrite: %v, want AlreadyExists", err)
	}
	if err := putSnap(snap("s4", "i1", "")); err != nil {
		t.Fatalf("unnamed snapshot: %v", err)
	}
	if err := s.Update(func(tx *Tx) error { return tx.DeleteSnapshot("s1") }); err != nil {
		t.Fatal(err)
	}
	if err := putSnap(snap("s5", "i1", "base")); err != nil {
		t.Fatalf("name freed by delete: %v", err)
	}
	var all []Snapshot
	s.View(func(tx *Tx) (err error) { all, err = tx.Snapshots(); return })
	if len(all) != 3 {
		t.Fatalf("got %d snapshots, want 3", len(all))
	}
}

func TestIntentsRoundTrip(t *testing.T) {
	s, _ := openTemp(t)
	in := Intent{ID: "i1", Op: OpFork, InstanceID: "new", SourceID: "src", Members: []string{"new"}, CreatedAt: time.Now()}
	if err := s.Update(func(tx *Tx) error { return tx.PutIntent(in) }); err != nil {
		t.Fatal(err)
	}
	var got []Intent
	s.View(func(tx *Tx) (err error) { got, err = tx.Intents(); return })
	if len(got) != 1 || got[0].Op != OpFork || len(got[0].Members) != 1 {
		t.Fatalf("intents = %+v", got)
	}
	if err := s.Update(func(tx *Tx) error { return tx.PutIntent(Intent{ID: "x"}) }); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("intent without op: %v", err)
	}
	s.Update(func(tx *Tx) error { return tx.DeleteIntent("i1") })
	s.View(func(tx *Tx) (err error) { got, err = tx.Intents(); return })
	if len(got) != 0 {
		t.Fatalf("intent survived delete: %+v", got)
	}
}

func TestPersistsAcrossReopen(t *testing.T) {
	s, path := openTemp(t)
	if err := put(t, s, Instance{ID: "aaaa", Name: "web", State: Standby, CacheKey: "k1"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	var got Instance
	s2.View(func(tx *Tx) (err error) { got, err = tx.InstanceByName("web"); return })
	if got.ID != "aaaa" || got.State != Standby || got.CacheKey != "k1" {
		t.Fatalf("after reopen: %+v", got)
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	_, path := openTemp(t)
	_, err := Open(path)
	if !errdefs.IsConflict(err) {
		t.Fatalf("second Open of a locked store: %v, want Conflict", err)
	}
}

func TestMigrations(t *testing.T) {
	for i := 1; i < len(migrations); i++ {
		if migrations[i].version <= migrations[i-1].version {
			t.Fatalf("migrations out of order at %d", i)
		}
	}
	s, path := openTemp(t)
	s.View(func(tx *Tx) error {
		v := tx.tx.Bucket(bucketMeta).Get(keySchemaVersion)
		if binary.BigEndian.Uint64(v) != SchemaVersion() {
			t.Errorf("schema version = %d, want %d", binary.BigEndian.Uint64(v), SchemaVersion())
		}
		return nil
	})
	// A database from a newer binary is refused, not silently used.
	s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchemaVersion, binary.BigEndian.AppendUint64(nil, SchemaVersion()+1))
	})
	s.Close()
	if _, err := Open(path); err == nil {
		t.Fatal("Open of a newer-schema database succeeded")
	}
}
