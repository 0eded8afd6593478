package e2e

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/images/imagestest"
	"github.com/zygote/zygote/instances/lifecycletest"
	"github.com/zygote/zygote/internal/testutil"
)

// TestLifecycleModelRealVMs is the short run of the randomized lifecycle
// model with real VMs (the long runs use the fake driver, in instances):
// one check of a few steps unless -rapid.checks / -rapid.steps say more.
func TestLifecycleModelRealVMs(t *testing.T) {
	setDefaultFlag("rapid.checks", "1")
	setDefaultFlag("rapid.steps", "14")
	d := newDaemon(t, testutil.XFS(t))
	d.start()
	rapid.Check(t, func(rt *rapid.T) {
		w := &apiWorld{d: d}
		defer w.reset()
		lifecycletest.Run(rt, w, lifecycletest.Options{MaxInstances: 4, MaxSnapshots: 2, Boots: false})
	})
}

// setDefaultFlag sets a flag unless the command line did.
// TestLifecycleModelImages runs the model over image instances: besides
// the memory marker, a disk marker on each instance's overlay, which every
// fork and snapshot must carry and nothing may lose.
func TestLifecycleModelImages(t *testing.T) {
	setDefaultFlag("rapid.checks", "1")
	setDefaultFlag("rapid.steps", "14")
	reg := imagestest.StartRegistry(t)
	image := reg + "/busybox:model"
	imagestest.PushImage(t, image, imagestest.BusyboxImage(t))
	d := newDaemon(t, testutil.XFS(t))
	d.start()
	rapid.Check(t, func(rt *rapid.T) {
		w := &imageWorld{apiWorld{d: d, image: image}}
		defer w.reset()
		lifecycletest.Run(rt, w, lifecycletest.Options{MaxInstances: 4, MaxSnapshots: 2, Boots: false})
	})
}

// imageWorld is apiWorld over image instances, with disk markers.
type imageWorld struct{ apiWorld }

func (w *imageWorld) WriteDiskMarker(ctx context.Context, name, v string) error {
	w.d.sh(name, "echo "+v+" > /root/disk-marker") // no sync: forks and snapshots must flush
	return nil
}

func (w *imageWorld) ReadDiskMarker(ctx context.Context, name string) (string, error) {
	return w.d.sh(name, "cat /root/disk-marker 2>/dev/null || true"), nil
}

func setDefaultFlag(name, value string) {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	if !set {
		flag.Set(name, value)
	}
}

type apiWorld struct {
	d *daemon
	// image, when set, makes every create an instance of it (a program
	// that sleeps) instead of the built-in guest.
	image string
}

func (w *apiWorld) c() *client.Client { return w.d.c }

// reset deletes everything a check made, so checks are independent.
func (w *apiWorld) reset() {
	list, _ := w.c().ListInstances(ctx, client.ListOptions{})
	for _, in := range list {
		w.c().DeleteInstance(ctx, in.ID, true)
	}
	snaps, _ := w.c().ListSnapshots(ctx, client.SnapshotListOptions{})
	for _, s := range snaps {
		w.c().DeleteSnapshot(ctx, s.ID)
	}
}

func (w *apiWorld) running(name string) error {
	_, err := w.c().WaitForState(ctx, name, "Running", 3*time.Minute)
	return err
}

func (w *apiWorld) Create(ctx context.Context, name string) (string, error) {
	req := api.CreateInstanceRequest{Name: name}
	if w.image != "" {
		req.Image, req.Cmd, req.OverlaySize = w.image, []string{"-c", "sleep 1000000"}, "256MB"
	}
	in, err := w.c().CreateInstance(ctx, req)
	if err != nil {
		return "", err
	}
	return in.ID, w.running(name)
}

func (w *apiWorld) Standby(ctx context.Context, name string) error {
	_, err := w.c().StandbyInstance(ctx, name)
	return err
}

func (w *apiWorld) Restore(ctx context.Context, name string) error {
	_, err := w.c().RestoreInstance(ctx, name)
	return err
}

func (w *apiWorld) Stop(ctx context.Context, name string) error {
	_, err := w.c().StopInstance(ctx, name)
	return err
}

func (w *apiWorld) Start(ctx context.Context, name string) error {
	if _, err := w.c().StartInstance(ctx, name); err != nil {
		return err
	}
	return w.running(name)
}

func (w *apiWorld) Fork(ctx context.Context, src, name, target, memory string) (string, error) {
	in, err := w.c().ForkInstance(ctx, src, api.ForkInstanceRequest{Name: name, FromRunning: true, TargetState: target, Memory: memory})
	if err == nil && target == "Running" {
		err = w.running(name)
	}
	return in.ID, err
}

func (w *apiWorld) Snapshot(ctx context.Context, src, kind string) (string, error) {
	s, err := w.c().CreateSnapshot(ctx, src, api.CreateSnapshotRequest{Kind: kind})
	return s.ID, err
}

func (w *apiWorld) ForkSnapshot(ctx context.Context, id, name, memory string) (string, error) {
	in, err := w.c().ForkSnapshot(ctx, id, api.ForkSnapshotRequest{Name: name, Memory: memory})
	if err == nil && in.State != "Stopped" {
		err = w.running(name)
	}
	return in.ID, err
}

func (w *apiWorld) Delete(ctx context.Context, name string, force bool) error {
	return w.c().DeleteInstance(ctx, name, force)
}

func (w *apiWorld) DeleteSnapshot(ctx context.Context, id string) error {
	return w.c().DeleteSnapshot(ctx, id)
}

// Restart kills the daemon (SIGKILL) and starts a new one.
func (w *apiWorld) Restart(ctx context.Context) error {
	w.d.kill9()
	w.d.start()
	list, err := w.c().ListInstances(ctx, client.ListOptions{})
	for _, in := range list {
		if in.State == "Initializing" {
			if err := w.running(in.ID); err != nil {
				return err
			}
		}
	}
	return err
}

func (w *apiWorld) WriteMarker(ctx context.Context, name, v string) error {
	w.d.sh(name, "echo "+v+" > /dev/shm/marker")
	return nil
}

func (w *apiWorld) ReadMarker(ctx context.Context, name string) (string, error) {
	return w.d.sh(name, "cat /dev/shm/marker 2>/dev/null || true"), nil
}

func (w *apiWorld) States(ctx context.Context) (map[string]string, error) {
	list, err := w.c().ListInstances(ctx, client.ListOptions{})
	out := map[string]string{}
	for _, in := range list {
		out[in.Name] = in.State
	}
	return out, err
}

// Check asserts that a memory file two holders (instances, snapshots)
// share is held only by sharing forks, parked instances and snapshots:
// never by an instance running in place on it (issue 12; no two owned
// memory files are one inode).
func (w *apiWorld) Check(t *rapid.T, m *lifecycletest.Model) {
	inPlace := map[string]bool{} // instance id -> runs with its file as RAM
	for _, in := range m.Instances {
		inPlace[in.ID] = in.State == lifecycletest.Running && !in.Shared
	}
	inodes := map[uint64][]string{}
	for _, sub := range []string{"instances", "snapshots"} {
		ents, _ := os.ReadDir(filepath.Join(w.d.dataDir, sub))
		for _, e := range ents {
			fi, err := os.Stat(filepath.Join(w.d.dataDir, sub, e.Name(), "memory"))
			if err != nil {
				continue
			}
			ino := fi.Sys().(*syscall.Stat_t).Ino
			inodes[ino] = append(inodes[ino], sub+"/"+e.Name())
		}
	}
	for ino, holders := range inodes {
		if len(holders) < 2 {
			continue
		}
		for _, h := range holders {
			if id, ok := strings.CutPrefix(h, "instances/"); ok && inPlace[id] {
				t.Fatalf("%s runs in place on memory inode %d, which %v also hold", h, ino, holders)
			}
		}
	}
}
