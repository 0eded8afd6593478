package api_test

import (
	"testing"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/instances/instancestest"
	"github.com/zygote/zygote/internal/testutil"
)

// TestVolumes: /volumes create, list, get, delete, and their refusals.
func TestVolumes(t *testing.T) {
	testutil.RequirePrivileged(t, "formatting volumes", "mkfs.ext4")
	e := newEnv(t)
	v, err := e.c.CreateVolume(ctx, api.CreateVolumeRequest{Name: "data", SizeGB: 2, Tags: map[string]string{"team": "a"}})
	if err != nil {
		t.Fatal(err)
	}
	if v.Name != "data" || v.SizeGB != 2 || v.SizeBytes != 2<<30 || v.ID == "" || v.Tags["team"] != "a" {
		t.Errorf("created %+v", v)
	}
	for name, tc := range map[string]struct {
		req   api.CreateVolumeRequest
		class func(error) bool
	}{
		"taken name": {api.CreateVolumeRequest{Name: "data", SizeGB: 1}, errdefs.IsAlreadyExists},
		"no size":    {api.CreateVolumeRequest{Name: "x"}, errdefs.IsInvalidArgument},
		"bad name":   {api.CreateVolumeRequest{Name: "No", SizeGB: 1}, errdefs.IsInvalidArgument},
	} {
		if _, err := e.c.CreateVolume(ctx, tc.req); !tc.class(err) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, ref := range []string{"data", v.ID} {
		if got, err := e.c.GetVolume(ctx, ref); err != nil || got.ID != v.ID {
			t.Errorf("get %s: %+v %v", ref, got, err)
		}
	}
	if _, err := e.c.GetVolume(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Errorf("get nope: %v", err)
	}
	if list, err := e.c.ListVolumes(ctx); err != nil || len(list) != 1 {
		t.Errorf("list %+v %v", list, err)
	}
	// Volumes go into an image's root: without an image, 400.
	if _, err := e.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "a", Size: "64MB",
		Volumes: []api.VolumeMount{{VolumeID: "data", MountPath: "/data"}}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("volume without image: %v", err)
	}
	if err := e.c.DeleteVolume(ctx, "data"); err != nil {
		t.Fatal(err)
	}
	if err := e.c.DeleteVolume(ctx, "data"); !errdefs.IsNotFound(err) {
		t.Errorf("delete twice: %v", err)
	}
	// A daemon without a volume store says so.
	bare := newEnvOpts(t, instancestest.Clone, instancestest.Options{NoVolumes: true})
	if _, err := bare.c.ListVolumes(ctx); !errdefs.IsNotImplemented(err) {
		t.Errorf("list without a volume store: %v", err)
	}
}
