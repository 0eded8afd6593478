// Package lifecycletest is the randomized lifecycle model (rapid): random
// sequences of create, write, standby, restore, stop, start, fork (owning
// or sharing memory), snapshot, snapshot fork, deletes and daemon restarts, each step checked
// against a model of every instance's state and guest memory content.
//
// It drives a World: the manager over the fake driver (long runs, in
// instances' tests) or the real daemon with QEMU VMs (a short run, in e2e).
package lifecycletest

import (
	"context"
	"fmt"
	"sort"

	"pgregory.net/rapid"
)

// States as the API names them.
const (
	Running = "Running"
	Standby = "Standby"
	Stopped = "Stopped"
)

// World is what the model drives. Calls return once the instance has
// reached the state the call implies (Running means the agent answers).
type World interface {
	Create(ctx context.Context, name string) (id string, err error)
	Standby(ctx context.Context, name string) error
	Restore(ctx context.Context, name string) error
	Stop(ctx context.Context, name string) error
	Start(ctx context.Context, name string) error
	// Fork forks with from_running to target; memory is "shared" or
	// "owned" (how the fork holds the source's memory file).
	Fork(ctx context.Context, src, name, target, memory string) (id string, err error)
	// Snapshot takes a Standby snapshot of a Running or Standby instance,
	// a Stopped one of a Stopped instance.
	Snapshot(ctx context.Context, src, kind string) (id string, err error)
	ForkSnapshot(ctx context.Context, snapshotID, name, memory string) (id string, err error)
	Delete(ctx context.Context, name string, force bool) error
	DeleteSnapshot(ctx context.Context, id string) error
	Restart(ctx context.Context) error
	WriteMarker(ctx context.Context, name, value string) error
	ReadMarker(ctx context.Context, name string) (string, error)
	// States returns every instance's state by name.
	States(ctx context.Context) (map[string]string, error)
	// Check inspects what only this world can see (files, inodes) against
	// the model.
	Check(t *rapid.T, m *Model)
}

// DiskWorld is a World whose instances have a writable disk (an image's
// overlay): a disk marker survives stop/start, standby/restore and daemon
// restarts, and every fork and snapshot carries its source's (DESIGN
// invariant 7), whatever the target state. Worlds without it skip the
// disk steps.
type DiskWorld interface {
	WriteDiskMarker(ctx context.Context, name, value string) error
	ReadDiskMarker(ctx context.Context, name string) (string, error)
}

// Instance is the model of one instance.
type Instance struct {
	ID, Name, State string
	// Marker is what the guest's memory holds ("" after a fresh boot).
	Marker string
	// Shared: a sharing fork (its memory file may be a link others hold).
	Shared bool
	// DiskMarker is what its overlay disk holds (DiskWorld).
	DiskMarker string
}

// Snapshot is the model of one snapshot.
type Snapshot struct {
	ID, Kind, Marker, DiskMarker string
}

// Model is the expected world.
type Model struct {
	Instances map[string]*Instance // by name
	Snapshots map[string]*Snapshot // by id
	next      int
}

// Options bound a run.
type Options struct {
	MaxInstances, MaxSnapshots int
	// Boots allows creates beyond the first and starts: cheap over the
	// fake driver, seconds each with real VMs.
	Boots bool
}

var ctx = context.Background()

// Run checks one random sequence against w.
func Run(t *rapid.T, w World, opt Options) {
	m := &Model{Instances: map[string]*Instance{}, Snapshots: map[string]*Snapshot{}}
	t.Repeat(actions(w, m, opt))
}

func (m *Model) name() string   { m.next++; return fmt.Sprintf("vm-%d", m.next) }
func (m *Model) marker() string { m.next++; return fmt.Sprintf("mark%04d", m.next) }

func (m *Model) pick(t *rapid.T, states ...string) *Instance {
	var names []string
	for n, in := range m.Instances {
		for _, s := range states {
			if in.State == s {
				names = append(names, n)
			}
		}
	}
	if len(names) == 0 {
		t.Skip("no instance in a fitting state")
	}
	sort.Strings(names)
	return m.Instances[rapid.SampledFrom(names).Draw(t, "instance")]
}

func must(t *rapid.T, err error, format string, args ...any) {
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

var allStates = []string{Running, Standby, Stopped}

// memoryModes are the fork memory modes the model draws from.
var memoryModes = []string{"owned", "shared"}

func actions(w World, m *Model, opt Options) map[string]func(*rapid.T) {
	acts := map[string]func(*rapid.T){
		"create": func(t *rapid.T) {
			if len(m.Instances) >= opt.MaxInstances || (!opt.Boots && len(m.Instances) > 0) {
				t.Skip("no more creates")
			}
			name := m.name()
			id, err := w.Create(ctx, name)
			must(t, err, "create %s", name)
			m.Instances[name] = &Instance{ID: id, Name: name, State: Running}
		},
		"write": func(t *rapid.T) {
			in := m.pick(t, Running)
			v := m.marker()
			must(t, w.WriteMarker(ctx, in.Name, v), "write %s", in.Name)
			in.Marker = v
		},
		"standby": func(t *rapid.T) {
			in := m.pick(t, Running)
			must(t, w.Standby(ctx, in.Name), "standby %s", in.Name)
			in.State = Standby
		},
		"restore": func(t *rapid.T) {
			in := m.pick(t, Standby)
			must(t, w.Restore(ctx, in.Name), "restore %s", in.Name)
			in.State = Running
		},
		"fork": func(t *rapid.T) {
			if len(m.Instances) >= opt.MaxInstances {
				t.Skip("enough instances")
			}
			src := m.pick(t, allStates...)
			target := rapid.SampledFrom(allStates).Draw(t, "target")
			if src.State == Stopped && target == Standby {
				t.Skip("a stopped source has no memory to fork into Standby") // a 400, tested elsewhere
			}
			if src.State == Stopped && target == Running && !opt.Boots {
				t.Skip("would boot")
			}
			name := m.name()
			memory := rapid.SampledFrom(memoryModes).Draw(t, "memory")
			id, err := w.Fork(ctx, src.Name, name, target, memory)
			must(t, err, "fork %s → %s (%s, memory %s)", src.Name, name, target, memory)
			marker := src.Marker
			if target == Stopped || src.State == Stopped {
				marker = ""
			}
			// A fork of a stopped source owns the memory it boots.
			shared := memory == "shared" && src.State != Stopped
			m.Instances[name] = &Instance{ID: id, Name: name, State: target, Marker: marker, Shared: shared, DiskMarker: src.DiskMarker}
		},
		"snapshot": func(t *rapid.T) {
			if len(m.Snapshots) >= opt.MaxSnapshots {
				t.Skip("enough snapshots")
			}
			src := m.pick(t, allStates...)
			kind := Standby
			if src.State == Stopped {
				kind = Stopped
			}
			id, err := w.Snapshot(ctx, src.Name, kind)
			must(t, err, "snapshot %s", src.Name)
			m.Snapshots[id] = &Snapshot{ID: id, Kind: kind, Marker: src.Marker, DiskMarker: src.DiskMarker}
		},
		"fork snapshot": func(t *rapid.T) {
			if len(m.Snapshots) == 0 || len(m.Instances) >= opt.MaxInstances {
				t.Skip("no snapshot or enough instances")
			}
			var ids []string
			for id := range m.Snapshots {
				ids = append(ids, id)
			}
			sort.Strings(ids)
			sn := m.Snapshots[rapid.SampledFrom(ids).Draw(t, "snapshot")]
			name := m.name()
			memory := rapid.SampledFrom(memoryModes).Draw(t, "memory")
			id, err := w.ForkSnapshot(ctx, sn.ID, name, memory)
			must(t, err, "fork snapshot %s (memory %s)", sn.ID, memory)
			in := &Instance{ID: id, Name: name, State: Stopped, DiskMarker: sn.DiskMarker}
			if sn.Kind == Standby {
				in.State, in.Marker, in.Shared = Running, sn.Marker, memory == "shared"
			}
			m.Instances[name] = in
		},
		"delete": func(t *rapid.T) {
			in := m.pick(t, allStates...)
			must(t, w.Delete(ctx, in.Name, rapid.Bool().Draw(t, "force")), "delete %s", in.Name)
			delete(m.Instances, in.Name)
		},
		"delete snapshot": func(t *rapid.T) {
			var ids []string
			for id := range m.Snapshots {
				ids = append(ids, id)
			}
			if len(ids) == 0 {
				t.Skip("no snapshot")
			}
			sort.Strings(ids)
			id := rapid.SampledFrom(ids).Draw(t, "snapshot")
			must(t, w.DeleteSnapshot(ctx, id), "delete snapshot %s", id)
			delete(m.Snapshots, id)
		},
		"restart daemon": func(t *rapid.T) {
			must(t, w.Restart(ctx), "restart")
		},
		"": func(t *rapid.T) { check(t, w, m) },
	}
	if dw, ok := w.(DiskWorld); ok {
		acts["write disk"] = func(t *rapid.T) {
			in := m.pick(t, Running)
			v := m.marker()
			must(t, dw.WriteDiskMarker(ctx, in.Name, v), "write disk %s", in.Name)
			in.DiskMarker = v
		}
	}
	if opt.Boots {
		acts["stop"] = func(t *rapid.T) {
			in := m.pick(t, Running, Standby)
			must(t, w.Stop(ctx, in.Name), "stop %s", in.Name)
			in.State, in.Marker, in.Shared = Stopped, "", false
		}
		acts["start"] = func(t *rapid.T) {
			in := m.pick(t, Stopped)
			must(t, w.Start(ctx, in.Name), "start %s", in.Name)
			in.State, in.Marker = Running, ""
		}
	}
	return acts
}

// check compares the world with the model after every step.
func check(t *rapid.T, w World, m *Model) {
	states, err := w.States(ctx)
	must(t, err, "list")
	if len(states) != len(m.Instances) {
		t.Fatalf("%d instances %v, the model has %d", len(states), states, len(m.Instances))
	}
	for name, in := range m.Instances {
		if states[name] != in.State {
			t.Fatalf("%s is %s, the model says %s", name, states[name], in.State)
		}
		if in.State == Running {
			got, err := w.ReadMarker(ctx, name)
			must(t, err, "read %s", name)
			if got != in.Marker {
				t.Fatalf("%s's guest memory holds %q, the model says %q", name, got, in.Marker)
			}
			if dw, ok := w.(DiskWorld); ok {
				got, err := dw.ReadDiskMarker(ctx, name)
				must(t, err, "read disk %s", name)
				if got != in.DiskMarker {
					t.Fatalf("%s's overlay disk holds %q, the model says %q", name, got, in.DiskMarker)
				}
			}
		}
	}
	w.Check(t, m)
}
