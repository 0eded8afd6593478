// Package instancestest builds instance managers over drivertest.Fake and
// FakeAgent for tests of the manager and the API: no VM boots, every
// state-machine, crash-recovery and ownership rule still runs for real
// against a real store and real files.
package instancestest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/hypervisor/drivertest"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/store"
	"github.com/zygote/zygote/volumes"
)

// Harness is a manager on fakes, with a data directory of its own.
type Harness struct {
	M       *instances.Manager
	Fake    *drivertest.Fake
	Store   *store.Store
	DataDir string
	Clone   instances.Cloner
	// Registry holds the manager's metrics (a fresh one each start).
	Registry *prometheus.Registry
	// Images is the manager's image source (nil: no image support).
	Images instances.ImageSource
	// NoVolumes leaves the manager without a volume store.
	NoVolumes bool
	// Net, when set (NewNetworked, Options.Net), gives instances network
	// slots.
	Net *FakeNetwork
	t   testing.TB
}

// New starts a manager over a fake driver in dataDir (t.TempDir() if
// empty). clone copies directories for snapshots and forks.
func New(t testing.TB, dataDir string, clone instances.Cloner) *Harness {
	t.Helper()
	return NewWithImages(t, dataDir, clone, nil)
}

// NewNetworked is New with a FakeNetwork: instances get slots.
func NewNetworked(t testing.TB, dataDir string, clone instances.Cloner) *Harness {
	t.Helper()
	return NewWith(t, dataDir, clone, Options{Net: NewFakeNetwork()})
}

// NewWithImages is New with an image source for creates from images.
func NewWithImages(t testing.TB, dataDir string, clone instances.Cloner, images instances.ImageSource) *Harness {
	t.Helper()
	return NewWith(t, dataDir, clone, Options{Images: images})
}

// Options are the optional parts of a harness's manager.
type Options struct {
	Images    instances.ImageSource
	NoVolumes bool
	// Net gives instances network slots (nil: networking off).
	Net *FakeNetwork
}

// NewWith is New with options.
func NewWith(t testing.TB, dataDir string, clone instances.Cloner, opts Options) *Harness {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	h := &Harness{Fake: drivertest.NewFake(), DataDir: dataDir, Clone: clone, Images: opts.Images, NoVolumes: opts.NoVolumes, Net: opts.Net, t: t}
	h.start()
	t.Cleanup(func() {
		h.stop()
		for _, vm := range h.Fake.Live() {
			vm.Crash() // release the memory files (a test filesystem unmounts next)
		}
	})
	return h
}

func (h *Harness) start() {
	h.t.Helper()
	st, err := store.Open(filepath.Join(h.DataDir, "db"))
	if err != nil {
		h.t.Fatal(err)
	}
	h.Registry = prometheus.NewRegistry()
	var volStore instances.VolumeStore
	if !h.NoVolumes {
		vols, err := volumes.Open(volumes.Config{Root: filepath.Join(h.DataDir, "volumes"), InUse: instances.VolumeUsers(st), Logger: testLogger()})
		if err != nil {
			h.t.Fatal(err)
		}
		volStore = VolumeStore{vols}
	}
	cfg := instances.Config{
		Metrics: instances.NewMetrics(h.Registry),
		DataDir: h.DataDir, Store: st, Drivers: []hypervisor.Driver{h.Fake},
		Assets: func(context.Context) (hypervisor.BootAssets, error) {
			return hypervisor.BootAssets{Kernel: "fake-kernel", Initramfs: "fake-initramfs"}, nil
		},
		DialAgent: DialFakeAgent, Clone: h.Clone, Images: h.Images, Volumes: volStore,
		StopTimeout: 2 * time.Second, ReadyTimeout: 5 * time.Second,
		Logger: testLogger(),
	}
	if h.Net != nil {
		cfg.Network, cfg.NetworkDNS = h.Net, []string{"192.0.2.53"}
	}
	m, err := instances.New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := m.Reconcile(context.Background()); err != nil {
		h.t.Fatalf("reconcile: %v", err)
	}
	h.M, h.Store = m, st
}

func (h *Harness) stop() {
	if h.M != nil {
		h.M.Close()
		h.Store.Close()
		h.M = nil
	}
}

// Close stops the manager (VMs of the fake keep "running") and the store.
func (h *Harness) Close() { h.stop() }

// Restart simulates a daemon restart: the manager goes away (leaving fake
// VMs running, as real VMMs outlive a killed daemon), a new one opens the
// same store and reconciles.
func (h *Harness) Restart() {
	h.t.Helper()
	h.stop()
	h.start()
}

// VM returns the live fake VM of an instance, or nil.
func (h *Harness) VM(id string) *drivertest.FakeVM {
	for _, v := range h.Fake.Live() {
		if filepath.Base(v.Spec().Dir) == id {
			return v
		}
	}
	return nil
}

// WaitRunning waits until ref is Running.
func (h *Harness) WaitRunning(ref string) instances.Instance {
	h.t.Helper()
	res, err := h.M.Wait(context.Background(), ref, instances.StateRunning, 10*time.Second)
	if err != nil || res.State != instances.StateRunning {
		h.t.Fatalf("wait for %s Running: %+v %v", ref, res, err)
	}
	v, err := h.M.Get(context.Background(), ref)
	if err != nil {
		h.t.Fatal(err)
	}
	return v
}

// WaitState waits until ref reaches state (or cannot without a request).
func (h *Harness) WaitState(ref string, state instances.State) instances.Instance {
	h.t.Helper()
	if _, err := h.M.Wait(context.Background(), ref, state, 10*time.Second); err != nil {
		h.t.Fatalf("wait for %s %s: %v", ref, state, err)
	}
	v, err := h.M.Get(context.Background(), ref)
	if err != nil {
		h.t.Fatal(err)
	}
	return v
}

// testLogger discards logs unless ZYGOTE_TEST_LOG=1.
func testLogger() *slog.Logger {
	if os.Getenv("ZYGOTE_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}
