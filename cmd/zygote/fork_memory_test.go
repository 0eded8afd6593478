package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/guest/guesttest"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/internal/ids"
	"github.com/zygote/zygote/store"
)

// plantParked leaves in dataDir what a parked QEMU instance named name
// leaves: its Standby record, and a directory with a memory file and a
// state file. No VM: a fork of a Standby source to Standby starts none,
// so the daemon's fork (copy, link or not, commit) runs for real on it.
func plantParked(t *testing.T, dataDir, name string) {
	t.Helper()
	id := ids.New()
	dir := filepath.Join(dataDir, "instances", id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for file, body := range map[string]string{"memory": "guest RAM", "state": "device state"} {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	st, err := store.Open(filepath.Join(dataDir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	err = st.Update(func(tx *store.Tx) error {
		return tx.PutInstance(store.Instance{
			ID: id, Name: name, State: store.Standby, CacheKey: ids.New(), CreatedAt: time.Now(),
			Spec: store.Spec{Hypervisor: "qemu", VCPUs: 1, MemoryBytes: instances.MinMemoryBytes},
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestServeForkMemory: --fork-memory sets the memory mode of a fork that
// names none (owned when not given); a fork that names one gets it.
func TestServeForkMemory(t *testing.T) {
	guesttest.QEMU(t) // serve checks `qemu-system-x86_64 --version`
	for _, c := range []struct {
		args      []string
		want      string
		wantLinks int
	}{
		{nil, "owned", 1},
		{[]string{"--fork-memory", "owned"}, "owned", 1},
		{[]string{"--fork-memory", "shared"}, "shared", 2},
	} {
		t.Run(strings.Join(append([]string{"serve"}, c.args...), "_"), func(t *testing.T) {
			dir := t.TempDir()
			dataDir, socket := filepath.Join(dir, "data"), filepath.Join(dir, "zygote.sock")
			plantParked(t, dataDir, "src")
			root := newRootCmd()
			root.SetArgs(append([]string{"serve", "--data-dir", dataDir, "--socket", socket,
				"--cache-dir", filepath.Join(dir, "cache"), "--log-level", "warn"}, c.args...))
			ctx, cancel := context.WithCancel(context.Background())
			served := make(chan error, 1)
			go func() { served <- root.ExecuteContext(ctx) }() // owner: this test; cancel ends it
			defer func() { cancel(); <-served }()
			waitHealthy(t, socket, served)
			cl, err := client.New(socket, "")
			if err != nil {
				t.Fatal(err)
			}
			f, err := cl.ForkInstance(ctx, "src", api.ForkInstanceRequest{Name: "child"})
			if err != nil {
				t.Fatal(err)
			}
			if f.Memory != c.want || f.MemoryLinks != c.wantLinks {
				t.Fatalf("serve %v: a fork naming no memory mode holds %q memory with %d links, want %q with %d", c.args, f.Memory, f.MemoryLinks, c.want, c.wantLinks)
			}
			// The request's mode wins over the default.
			other := map[string]string{"owned": "shared", "shared": "owned"}[c.want]
			if g, err := cl.ForkInstance(ctx, "src", api.ForkInstanceRequest{Name: "explicit", Memory: other}); err != nil || g.Memory != other {
				t.Fatalf("serve %v: a fork asking for %s memory: %q, %v", c.args, other, g.Memory, err)
			}
		})
	}
}

// TestServeRefusesUnknownForkMemory: a mode that is neither is refused
// when the flags are parsed, naming the flag.
func TestServeRefusesUnknownForkMemory(t *testing.T) {
	var mode instances.MemoryMode
	for _, bad := range []string{"", "borrowed", "Shared"} {
		if err := (forkMemoryFlag{&mode}).Set(bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("--fork-memory %q: %v, want an invalid argument", bad, err)
		}
	}
	_, _, wait, _ := startServe(t, "--fork-memory", "borrowed")
	if err := wait(); err == nil || !strings.Contains(err.Error(), `"--fork-memory"`) {
		t.Fatalf("serve --fork-memory borrowed: %v", err)
	}
}
