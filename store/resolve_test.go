package store

import (
	"errors"
	"testing"
	"time"

	"github.com/zygote/zygote/errdefs"
)

func TestResolveSnapshot(t *testing.T) {
	s, _ := openTemp(t)
	now := time.Now()
	for _, sn := range []Snapshot{
		{ID: "q7aaaa", Name: "base", SourceInstanceID: "web"},
		{ID: "q7bbbb", Name: "shared", SourceInstanceID: "web"},
		{ID: "r1cccc", Name: "shared", SourceInstanceID: "db"},
		{ID: "r2dddd", Name: "q7aaaa", SourceInstanceID: "db"}, // a name that is another's id
		{ID: "s9eeee", SourceInstanceID: "db"},                 // unnamed
	} {
		sn.CreatedAt = now
		if err := s.Update(func(tx *Tx) error { return tx.PutSnapshot(sn) }); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		ref, want string
		class     error
	}{
		{ref: "base", want: "q7aaaa"},
		{ref: "s9eeee", want: "s9eeee"},
		{ref: "s9", want: "s9eeee"},
		{ref: "r1", want: "r1cccc"},
		{ref: "q7", class: errdefs.ErrAmbiguous},     // two ids
		{ref: "shared", class: errdefs.ErrAmbiguous}, // two sources' snapshots share the name
		{ref: "q7aaaa", class: errdefs.ErrAmbiguous}, // one's id, another's name
		{ref: "nope", class: errdefs.ErrNotFound},
		{ref: "", class: errdefs.ErrInvalidArgument},
	} {
		var got Snapshot
		err := s.View(func(tx *Tx) (err error) { got, err = tx.ResolveSnapshot(tc.ref); return })
		if tc.class != nil {
			if !errors.Is(err, tc.class) {
				t.Errorf("ResolveSnapshot(%q) = %s, %v; want %v", tc.ref, got.ID, err, tc.class)
			}
			continue
		}
		if err != nil || got.ID != tc.want {
			t.Errorf("ResolveSnapshot(%q) = %s, %v; want %s", tc.ref, got.ID, err, tc.want)
		}
	}
	// A deleted snapshot's name no longer resolves.
	if err := s.Update(func(tx *Tx) error { return tx.DeleteSnapshot("q7aaaa") }); err != nil {
		t.Fatal(err)
	}
	err := s.View(func(tx *Tx) error { _, err := tx.ResolveSnapshot("base"); return err })
	if !errdefs.IsNotFound(err) {
		t.Fatalf("a deleted snapshot's name: %v, want NotFound", err)
	}
}
