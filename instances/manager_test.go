package instances_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/hypervisor/drivertest"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/instances/instancestest"
)

var ctx = context.Background()

func newHarness(t *testing.T) *instancestest.Harness {
	return instancestest.New(t, "", instancestest.NoClone)
}

func create(t *testing.T, h *instancestest.Harness, name string) instances.Instance {
	t.Helper()
	if _, err := h.M.Create(ctx, instances.CreateRequest{Name: name, MemoryBytes: instances.MinMemoryBytes}); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return h.WaitRunning(name)
}

func execOut(t *testing.T, h *instancestest.Harness, ref string, cmd ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	code, err := h.M.Exec(ctx, ref, agent.ExecRequest{Command: cmd, Stdout: &out}, time.Second)
	if err != nil {
		t.Fatalf("exec %v in %s: %v", cmd, ref, err)
	}
	return out.String(), code
}

func instanceDirs(t *testing.T, h *instancestest.Harness) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(h.DataDir, "instances"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestCreateResolveAndList(t *testing.T) {
	h := newHarness(t)
	web := create(t, h, "web")
	if web.State != instances.StateRunning || web.Hostname != "web" || web.Spec.MemoryBytes != instances.MinMemoryBytes || web.Spec.VCPUs != 1 {
		t.Fatalf("created instance: %+v", web)
	}
	for _, ref := range []string{web.ID, "web", web.ID[:6]} {
		got, err := h.M.Get(ctx, ref)
		if err != nil || got.ID != web.ID {
			t.Errorf("Get(%q) = %s, %v", ref, got.ID, err)
		}
	}
	if _, err := h.M.Get(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Errorf("Get(nope) = %v, want NotFound", err)
	}
	if _, err := h.M.Create(ctx, instances.CreateRequest{Name: "db", Tags: map[string]string{"team": "a"}}); err != nil {
		t.Fatal(err)
	}
	h.WaitRunning("db")
	list, _ := h.M.List(ctx, instances.ListFilter{Tags: map[string]string{"team": "a"}})
	if len(list) != 1 || list[0].Name != "db" {
		t.Fatalf("tag filter: %v", list)
	}
	if _, err := h.M.Standby(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	list, _ = h.M.List(ctx, instances.ListFilter{State: instances.StateStandby})
	if len(list) != 1 || list[0].Name != "db" {
		t.Fatalf("state filter: %v", list)
	}
}

func TestCreateRejectsBadInputAndChangesNothing(t *testing.T) {
	h := newHarness(t)
	create(t, h, "taken")
	for _, tc := range []struct {
		name  string
		req   instances.CreateRequest
		class error
	}{
		{"empty name", instances.CreateRequest{}, errdefs.ErrInvalidArgument},
		{"uppercase", instances.CreateRequest{Name: "Web"}, errdefs.ErrInvalidArgument},
		{"trailing dash", instances.CreateRequest{Name: "web-"}, errdefs.ErrInvalidArgument},
		{"too long", instances.CreateRequest{Name: strings.Repeat("a", 64)}, errdefs.ErrInvalidArgument},
		{"duplicate", instances.CreateRequest{Name: "taken"}, errdefs.ErrAlreadyExists},
		{"too little memory", instances.CreateRequest{Name: "m", MemoryBytes: 1 << 20}, errdefs.ErrInvalidArgument},
		{"odd memory", instances.CreateRequest{Name: "m", MemoryBytes: 256<<20 + 1}, errdefs.ErrInvalidArgument},
		{"too many vcpus", instances.CreateRequest{Name: "m", VCPUs: 1000}, errdefs.ErrInvalidArgument},
		{"negative vcpus", instances.CreateRequest{Name: "m", VCPUs: -1}, errdefs.ErrInvalidArgument},
		{"unavailable hypervisor", instances.CreateRequest{Name: "m", Hypervisor: "firecracker"}, errdefs.ErrInvalidArgument},
		{"multi-line kernel args", instances.CreateRequest{Name: "m", KernelArgs: "a\nb"}, errdefs.ErrInvalidArgument},
		{"bad tag", instances.CreateRequest{Name: "m", Tags: map[string]string{"": "x"}}, errdefs.ErrInvalidArgument},
		{"bad env", instances.CreateRequest{Name: "m", Env: map[string]string{"A=B": "x"}}, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.M.Create(ctx, tc.req)
			if !errors.Is(err, tc.class) {
				t.Fatalf("err = %v, want %v", err, tc.class)
			}
			list, _ := h.M.List(ctx, instances.ListFilter{})
			if len(list) != 1 || len(instanceDirs(t, h)) != 1 || len(h.Fake.Live()) != 1 {
				t.Fatalf("a rejected create changed something: %d records, dirs %v, %d VMs", len(list), instanceDirs(t, h), len(h.Fake.Live()))
			}
		})
	}
}

func TestBootFailureLeavesNothing(t *testing.T) {
	h := newHarness(t)
	h.Fake.FailNext("Boot", errors.New("injected boot failure"))
	if _, err := h.M.Create(ctx, instances.CreateRequest{Name: "web"}); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("create with failing boot: %v", err)
	}
	if list, _ := h.M.List(ctx, instances.ListFilter{}); len(list) != 0 {
		t.Fatalf("failed create left a record: %v", list)
	}
	if d := instanceDirs(t, h); len(d) != 0 {
		t.Fatalf("failed create left directories: %v", d)
	}
	create(t, h, "web") // the name is free again
}

// TestStateMachine checks every lifecycle verb in every resting state.
func TestStateMachine(t *testing.T) {
	type op func(*instances.Manager, string) error
	ops := map[string]op{
		"start":   func(m *instances.Manager, r string) error { _, err := m.Start(ctx, r); return err },
		"stop":    func(m *instances.Manager, r string) error { _, err := m.Stop(ctx, r); return err },
		"standby": func(m *instances.Manager, r string) error { _, err := m.Standby(ctx, r); return err },
		"restore": func(m *instances.Manager, r string) error { _, err := m.Restore(ctx, r); return err },
	}
	// legal[state][op] = the state after; missing = 409.
	legal := map[instances.State]map[string]instances.State{
		instances.StateRunning: {"stop": instances.StateStopped, "standby": instances.StateStandby},
		instances.StateStandby: {"restore": instances.StateRunning, "stop": instances.StateStopped},
		instances.StateStopped: {"start": instances.StateRunning},
	}
	into := map[instances.State]func(*instancestest.Harness, string){
		instances.StateRunning: func(*instancestest.Harness, string) {},
		instances.StateStandby: func(h *instancestest.Harness, r string) {
			if _, err := h.M.Standby(ctx, r); err != nil {
				t.Fatal(err)
			}
		},
		instances.StateStopped: func(h *instancestest.Harness, r string) {
			if _, err := h.M.Stop(ctx, r); err != nil {
				t.Fatal(err)
			}
		},
	}
	for from, next := range legal {
		for name, call := range ops {
			t.Run(string(from)+"/"+name, func(t *testing.T) {
				h := newHarness(t)
				create(t, h, "vm")
				into[from](h, "vm")
				err := call(h.M, "vm")
				want, ok := next[name]
				if !ok {
					if !errdefs.IsInvalidState(err) {
						t.Fatalf("%s from %s: err = %v, want InvalidState", name, from, err)
					}
					if got, _ := h.M.Get(ctx, "vm"); got.State != from {
						t.Fatalf("a refused %s changed the state from %s to %s", name, from, got.State)
					}
					return
				}
				if err != nil {
					t.Fatalf("%s from %s: %v", name, from, err)
				}
				got := h.WaitState("vm", want)
				if got.State != want {
					t.Fatalf("%s from %s: state %s, want %s", name, from, got.State, want)
				}
			})
		}
	}
}

func TestExecExitCodes(t *testing.T) {
	h := newHarness(t)
	create(t, h, "web")
	if out, code := execOut(t, h, "web", "echo", "hello"); out != "hello\n" || code != 0 {
		t.Fatalf("echo: %q %d", out, code)
	}
	if _, code := execOut(t, h, "web", "false"); code != 1 {
		t.Fatalf("false: exit %d", code)
	}
	if _, code := execOut(t, h, "web", "exit", "42"); code != 42 {
		t.Fatalf("exit 42: exit %d", code)
	}
	if _, err := h.M.Standby(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.M.Exec(ctx, "web", agent.ExecRequest{Command: []string{"true"}}, time.Second); !errdefs.IsInvalidState(err) {
		t.Fatalf("exec in a standby instance: %v, want InvalidState", err)
	}
}

func TestStandbyRestoreKeepsMemoryAndRotatesCacheKey(t *testing.T) {
	h := newHarness(t)
	web := create(t, h, "web")
	execOut(t, h, "web", "write", "8192", "counter=41")
	parked, err := h.M.Standby(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if parked.CacheKey == "" || !parked.HasSavedState || h.VM(web.ID) != nil {
		t.Fatalf("after standby: key %q saved %v vm %v", parked.CacheKey, parked.HasSavedState, h.VM(web.ID))
	}
	restored, err := h.M.Restore(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if restored.State != instances.StateRunning || restored.CacheKey != "" {
		t.Fatalf("after restore: %s key %q", restored.State, restored.CacheKey)
	}
	if out, _ := execOut(t, h, "web", "read", "8192", "10"); out != "counter=41" {
		t.Fatalf("memory after restore: %q", out)
	}
	if _, err := os.Stat(filepath.Join(h.DataDir, "instances", web.ID, drivertest.StateFile)); !os.IsNotExist(err) {
		t.Fatalf("state file survived the restore: %v", err)
	}
	again, err := h.M.Standby(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if again.CacheKey == parked.CacheKey {
		t.Fatal("a second standby kept the cache key although the guest ran in between")
	}
}

func TestRestoreWithBadStateKeepsMemory(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(path string) error
	}{
		{"missing", os.Remove},
		{"corrupt", func(p string) error { return os.WriteFile(p, []byte("garbage"), 0o600) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			web := create(t, h, "web")
			execOut(t, h, "web", "write", "8192", "precious")
			if _, err := h.M.Standby(ctx, "web"); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(h.DataDir, "instances", web.ID)
			if err := tc.spoil(filepath.Join(dir, drivertest.StateFile)); err != nil {
				t.Fatal(err)
			}
			_, err := h.M.Restore(ctx, "web")
			if !errdefs.IsInvalidState(err) || !strings.Contains(err.Error(), tc.name) {
				t.Fatalf("restore with a %s state file: %v", tc.name, err)
			}
			mem, _ := os.ReadFile(filepath.Join(dir, drivertest.MemoryFile))
			if !bytes.Contains(mem, []byte("precious")) {
				t.Fatal("the memory file was lost by a failed restore")
			}
			if got, _ := h.M.Get(ctx, "web"); got.State != instances.StateStandby {
				t.Fatalf("state after failed restore: %s", got.State)
			}
			if _, err := h.M.Stop(ctx, "web"); err != nil {
				t.Fatalf("stop to discard the broken image: %v", err)
			}
		})
	}
}

func TestDeleteInEveryState(t *testing.T) {
	for _, state := range []string{"Running", "Standby", "Stopped"} {
		t.Run(state, func(t *testing.T) {
			h := newHarness(t)
			web := create(t, h, "web")
			switch state {
			case "Standby":
				h.M.Standby(ctx, "web")
			case "Stopped":
				h.M.Stop(ctx, "web")
			}
			if err := h.M.Delete(ctx, "web", false); err != nil {
				t.Fatal(err)
			}
			if _, err := h.M.Get(ctx, web.ID); !errdefs.IsNotFound(err) {
				t.Fatalf("get after delete: %v", err)
			}
			if d := instanceDirs(t, h); len(d) != 0 || len(h.Fake.Live()) != 0 {
				t.Fatalf("delete left dirs %v, VMs %d", d, len(h.Fake.Live()))
			}
			if err := h.M.Delete(ctx, "web", false); !errdefs.IsNotFound(err) {
				t.Fatalf("second delete: %v", err)
			}
		})
	}
}

func TestUnexpectedVMMExitMarksStopped(t *testing.T) {
	h := newHarness(t)
	web := create(t, h, "web")
	h.VM(web.ID).Crash()
	got := h.WaitState("web", instances.StateStopped)
	if got.State != instances.StateStopped || got.ExitMessage == "" || got.StoppedAt == nil {
		t.Fatalf("after a VMM crash: %+v", got)
	}
	if _, err := h.M.Start(ctx, "web"); err != nil {
		t.Fatalf("start after crash: %v", err)
	}
	h.WaitRunning("web")
}

func TestRestartAdoptsRunningVMs(t *testing.T) {
	h := newHarness(t)
	web := create(t, h, "web")
	execOut(t, h, "web", "write", "8192", "alive")
	create(t, h, "gone")
	goneID := h.VM(mustGet(t, h, "gone").ID)
	h.M.Close() // the daemon dies; its VMs do not
	goneID.Crash()
	h.Restart()
	if got := h.WaitRunning("web"); got.ID != web.ID {
		t.Fatalf("adopted %+v", got)
	}
	if out, _ := execOut(t, h, "web", "read", "8192", "5"); out != "alive" {
		t.Fatalf("exec after adoption: %q", out)
	}
	if got := mustGet(t, h, "gone"); got.State != instances.StateStopped {
		t.Fatalf("an instance whose VMM died while the daemon was down is %s", got.State)
	}
}

func mustGet(t *testing.T, h *instancestest.Harness, ref string) instances.Instance {
	t.Helper()
	v, err := h.M.Get(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestKillRecordsReason(t *testing.T) {
	h := newHarness(t)
	web := create(t, h, "web")
	create(t, h, "other")
	h.M.Kill(ctx, []string{web.ID, "not-an-instance"}, "its pager died")
	got := mustGet(t, h, "web")
	if got.State != instances.StateStopped || !strings.Contains(got.ExitMessage, "pager died") || h.VM(web.ID) != nil {
		t.Fatalf("killed instance: %s %q", got.State, got.ExitMessage)
	}
	if mustGet(t, h, "other").State != instances.StateRunning {
		t.Fatal("Kill touched another instance")
	}
}

func TestClosedManagerRefusesOperations(t *testing.T) {
	h := newHarness(t)
	create(t, h, "web")
	if err := h.M.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.M.Create(ctx, instances.CreateRequest{Name: "late"}); !errdefs.IsUnavailable(err) {
		t.Fatalf("create after Close: %v, want Unavailable", err)
	}
	if _, err := h.M.Standby(ctx, "web"); !errdefs.IsUnavailable(err) {
		t.Fatalf("standby after Close: %v, want Unavailable", err)
	}
	if h.VM(mustGet(t, h, "web").ID) == nil {
		t.Fatal("Close stopped a VM; it must leave them running for the next daemon")
	}
}
