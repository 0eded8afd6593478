package instances_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/hypervisor/drivertest"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/instances/instancestest"
	"github.com/zygote/zygote/instances/lifecycletest"
)

// TestLifecycleModel runs the randomized lifecycle model over the fake
// driver, whose restore refuses a memory file that is not exactly what was
// saved: a byte a fork or snapshot loses, or a file two instances share,
// fails it. A long run:
//
//	go test ./instances -run LifecycleModel -rapid.checks=2000 -rapid.steps=100
func TestLifecycleModel(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		h := instancestest.New(t, t.TempDir(), instancestest.Clone)
		defer h.Close()
		lifecycletest.Run(rt, &fakeWorld{h: h}, lifecycletest.Options{MaxInstances: 6, MaxSnapshots: 4, Boots: true})
	})
}

// markerOffset is where the fake guest keeps the model's marker.
const markerOffset = instancestest.GuestStateSize * 2

type fakeWorld struct{ h *instancestest.Harness }

func (w *fakeWorld) m() *instances.Manager { return w.h.M }

func (w *fakeWorld) running(name string) error {
	res, err := w.m().Wait(ctx, name, instances.StateRunning, 5*time.Second)
	if err == nil && res.State != instances.StateRunning {
		err = fmt.Errorf("%s is %s, not Running", name, res.State)
	}
	return err
}

func (w *fakeWorld) Create(ctx context.Context, name string) (string, error) {
	in, err := w.m().Create(ctx, instances.CreateRequest{Name: name, MemoryBytes: instances.MinMemoryBytes})
	if err != nil {
		return "", err
	}
	return in.ID, w.running(name)
}

func (w *fakeWorld) Standby(ctx context.Context, name string) error {
	_, err := w.m().Standby(ctx, name)
	return err
}

func (w *fakeWorld) Restore(ctx context.Context, name string) error {
	_, err := w.m().Restore(ctx, name)
	return err
}

func (w *fakeWorld) Stop(ctx context.Context, name string) error {
	_, err := w.m().Stop(ctx, name)
	return err
}

func (w *fakeWorld) Start(ctx context.Context, name string) error {
	if _, err := w.m().Start(ctx, name); err != nil {
		return err
	}
	return w.running(name)
}

func (w *fakeWorld) Fork(ctx context.Context, src, name, target, memory string) (string, error) {
	out, err := w.m().Fork(ctx, src, instances.ForkRequest{Name: name, FromRunning: true, TargetState: instances.State(target), Memory: instances.MemoryMode(memory)})
	if err != nil {
		return "", err
	}
	if target == lifecycletest.Running {
		err = w.running(name)
	}
	return out[0].ID, err
}

func (w *fakeWorld) Snapshot(ctx context.Context, src, kind string) (string, error) {
	s, err := w.m().CreateSnapshot(ctx, src, instances.SnapshotRequest{Kind: instances.SnapshotKind(kind)})
	return s.ID, err
}

func (w *fakeWorld) ForkSnapshot(ctx context.Context, id, name, memory string) (string, error) {
	out, err := w.m().ForkSnapshot(ctx, id, instances.ForkRequest{Name: name, Memory: instances.MemoryMode(memory)})
	if err != nil {
		return "", err
	}
	if out[0].State != instances.StateStopped {
		err = w.running(name)
	}
	return out[0].ID, err
}

func (w *fakeWorld) Delete(ctx context.Context, name string, force bool) error {
	return w.m().Delete(ctx, name, force)
}

func (w *fakeWorld) DeleteSnapshot(ctx context.Context, id string) error {
	return w.m().DeleteSnapshot(ctx, id)
}

func (w *fakeWorld) Restart(ctx context.Context) error {
	w.h.Restart()
	list, err := w.m().List(ctx, instances.ListFilter{})
	for _, in := range list {
		if in.State == instances.StateInitializing {
			if err := w.running(in.Name); err != nil {
				return err
			}
		}
	}
	return err
}

func (w *fakeWorld) WriteMarker(ctx context.Context, name, v string) error {
	code, err := w.m().Exec(ctx, name, agent.ExecRequest{Command: []string{"write", fmt.Sprint(markerOffset), v}}, time.Second)
	if err == nil && code != 0 {
		err = fmt.Errorf("write exited %d", code)
	}
	return err
}

func (w *fakeWorld) ReadMarker(ctx context.Context, name string) (string, error) {
	var out strings.Builder
	code, err := w.m().Exec(ctx, name, agent.ExecRequest{Command: []string{"read", fmt.Sprint(markerOffset), "8"}, Stdout: &out}, time.Second)
	if err == nil && code != 0 {
		err = fmt.Errorf("read exited %d", code)
	}
	return strings.TrimRight(out.String(), "\x00"), err
}

func (w *fakeWorld) States(ctx context.Context) (map[string]string, error) {
	list, err := w.m().List(ctx, instances.ListFilter{})
	out := map[string]string{}
	for _, in := range list {
		out[in.Name] = string(in.State)
	}
	return out, err
}

// Check reads what the model cannot see through the API: the marker in
// every parked memory image and snapshot (a sharing fork's own writes are
// in its state file: drivertest.ParkedMemory reads through them); that a
// memory file two holders share is held only by sharing forks, parked
// instances and snapshots, never by an instance running in place on it
// (DESIGN invariants 1 and 3, issue 12); and that nothing wrote into a
// shared file.
func (w *fakeWorld) Check(t *rapid.T, m *lifecycletest.Model) {
	type holder struct {
		name    string
		inPlace bool // runs with the file as its RAM, written in place
	}
	inodes := map[uint64][]holder{}
	see := func(dir, owner, want string, checkMarker, inPlace bool) {
		fi, err := os.Stat(filepath.Join(dir, drivertest.MemoryFile))
		if err != nil {
			if checkMarker {
				t.Fatalf("%s: memory file: %v", owner, err)
			}
			return
		}
		ino := fi.Sys().(*syscall.Stat_t).Ino
		inodes[ino] = append(inodes[ino], holder{owner, inPlace})
		if checkMarker {
			if got := parkedMarker(dir); got != want {
				t.Fatalf("%s: parked memory holds %q, the model says %q", owner, got, want)
			}
		}
	}
	for _, in := range m.Instances {
		see(filepath.Join(w.h.DataDir, "instances", in.ID), in.Name, in.Marker, in.State == lifecycletest.Standby,
			in.State == lifecycletest.Running && !in.Shared)
	}
	for id, sn := range m.Snapshots {
		see(filepath.Join(w.h.DataDir, "snapshots", id), "snapshot "+id, sn.Marker, sn.Kind == lifecycletest.Standby, false)
	}
	for ino, hs := range inodes {
		if len(hs) < 2 {
			continue
		}
		for _, h := range hs {
			if h.inPlace {
				t.Fatalf("%s runs in place on memory inode %d, which %v also hold", h.name, ino, hs)
			}
		}
	}
	if n := w.h.Fake.SharedWrites(); n != 0 {
		t.Fatalf("%d in-place writes into a shared memory file", n)
	}
}

func parkedMarker(dir string) string {
	buf, err := drivertest.ParkedMemory(dir, markerOffset, 8)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return strings.TrimRight(string(buf), "\x00")
}
