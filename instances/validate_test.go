package instances_test

import (
	"errors"
	"testing"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/instances"
)

// Create refuses what it cannot honour, naming the field, and creates
// nothing (issue 10 items 2 and 3).
func TestCreateRefusesWhatItCannotHonour(t *testing.T) {
	h := newCloningHarness(t)
	for _, tc := range []struct {
		name  string
		req   instances.CreateRequest
		class error
		field string
	}{
		{"image", instances.CreateRequest{Name: "a", Image: "alpine"}, errdefs.ErrNotImplemented, "image"},
		{"unavailable hypervisor", instances.CreateRequest{Name: "a", Hypervisor: "firecracker"}, errdefs.ErrInvalidArgument, ""},
		{"below the minimum", instances.CreateRequest{Name: "a", MemoryBytes: 1 << 20}, errdefs.ErrInvalidArgument, "size"},
		{"not whole MiB", instances.CreateRequest{Name: "a", MemoryBytes: 64<<20 + 1}, errdefs.ErrInvalidArgument, "size"},
		{"more than the host", instances.CreateRequest{Name: "a", MemoryBytes: 1 << 50}, errdefs.ErrInvalidArgument, "size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.M.Create(ctx, tc.req)
			if !errors.Is(err, tc.class) {
				t.Fatalf("Create: %v, want %v", err, tc.class)
			}
			var fe *instances.FieldError
			if tc.field != "" && (!errors.As(err, &fe) || fe.Field != tc.field) {
				t.Fatalf("Create: %v does not name field %q", err, tc.field)
			}
		})
	}
	if list, _ := h.M.List(ctx, instances.ListFilter{}); len(list) != 0 {
		t.Fatalf("refused creates left %d instances", len(list))
	}
}

func TestCheckTargetHypervisor(t *testing.T) {
	h := newCloningHarness(t)
	create(t, h, "web")
	snapshot(t, h, "web", "warm")
	if _, err := h.M.Stop(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.M.CreateSnapshot(ctx, "web", instances.SnapshotRequest{Kind: instances.SnapshotStopped, Name: "cold"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		snap, target string
		class        error
	}{
		{"warm", "", nil},
		{"warm", "qemu", nil},
		{"warm", "firecracker", errdefs.ErrInvalidArgument}, // a saved machine needs its VMM
		{"cold", "qemu", nil},
		{"cold", "firecracker", errdefs.ErrInvalidArgument}, // no driver on this host
		{"nope", "firecracker", errdefs.ErrNotFound},
	} {
		err := h.M.CheckTargetHypervisor(ctx, tc.snap, tc.target)
		if (tc.class == nil && err != nil) || (tc.class != nil && !errors.Is(err, tc.class)) {
			t.Errorf("CheckTargetHypervisor(%s, %q) = %v, want %v", tc.snap, tc.target, err, tc.class)
		}
	}
	if got := h.M.Hypervisors(); len(got) != 1 || got[0] != "qemu" {
		t.Fatalf("Hypervisors() = %v", got)
	}
}
