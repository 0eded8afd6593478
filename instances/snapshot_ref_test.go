package instances_test

import (
	"testing"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/instances"
)

// Snapshots are addressed by id, name or unique id prefix, as instances
// are (issue 10 item 1).
func TestSnapshotsByName(t *testing.T) {
	h := newCloningHarness(t)
	create(t, h, "web")
	create(t, h, "db")
	base := snapshot(t, h, "web", "base")
	if got, err := h.M.GetSnapshot(ctx, "base"); err != nil || got.ID != base.ID {
		t.Fatalf("get by name: %+v %v", got, err)
	}
	forks, err := h.M.ForkSnapshot(ctx, "base", instances.ForkRequest{Name: "w2", TargetState: instances.StateStandby})
	if err != nil || len(forks) != 1 || forks[0].ForkedFrom.SnapshotID != base.ID {
		t.Fatalf("fork by name: %+v %v", forks, err)
	}
	if _, err := h.M.Standby(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.M.RestoreSnapshot(ctx, "web", "base", instances.StateStandby); err != nil {
		t.Fatalf("restore by name: %v", err)
	}
	// A name two instances' snapshots share is ambiguous, and changes nothing.
	snapshot(t, h, "db", "shared")
	snapshot(t, h, "w2", "shared")
	if _, err := h.M.ForkSnapshot(ctx, "shared", instances.ForkRequest{Name: "w3"}); !errdefs.IsAmbiguous(err) {
		t.Fatalf("fork of an ambiguous name: %v, want Ambiguous", err)
	}
	if _, err := h.M.Get(ctx, "w3"); !errdefs.IsNotFound(err) {
		t.Fatalf("a refused fork left an instance: %v", err)
	}
	if err := h.M.DeleteSnapshot(ctx, "shared"); !errdefs.IsAmbiguous(err) {
		t.Fatalf("delete of an ambiguous name: %v, want Ambiguous", err)
	}
	if err := h.M.DeleteSnapshot(ctx, "base"); err != nil {
		t.Fatalf("delete by name: %v", err)
	}
	if _, err := h.M.GetSnapshot(ctx, "base"); !errdefs.IsNotFound(err) {
		t.Fatalf("get after delete: %v", err)
	}
	if _, err := h.M.GetSnapshot(ctx, base.ID); !errdefs.IsNotFound(err) {
		t.Fatalf("get by id after delete by name: %v", err)
	}
}
