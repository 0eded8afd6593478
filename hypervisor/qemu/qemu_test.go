package qemu_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/guest/agent"
	"github.com/zygote/zygote/guest/guesttest"
	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/hypervisor/drivertest"
	"github.com/zygote/zygote/hypervisor/qemu"
)

// TestConformance runs the driver contract suite against QEMU with a real
// guest (TCG here, KVM where it works).
func TestConformance(t *testing.T) {
	guesttest.QEMU(t)
	assets := guesttest.Assets(t)
	d, err := qemu.New(qemu.Config{
		ShareFile: func(ctx context.Context, src, dst string) error {
			_, err := clone.File(ctx, src, dst, clone.Options{NoSync: true, Logger: slog.New(slog.DiscardHandler)})
			return err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	exec := func(t *testing.T, vm hypervisor.VM, script string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		c, err := agent.DialFunc(ctx, vm.DialAgent, agent.Options{})
		if err != nil {
			t.Fatalf("agent: %v", err)
		}
		defer c.Close()
		if !c.Hello().Configured {
			if err := c.Configure(ctx, agent.Config{Hostname: "conformance"}); err != nil {
				t.Fatal(err)
			}
		}
		var out bytes.Buffer
		code, err := c.Exec(ctx, agent.ExecRequest{Command: []string{"sh", "-c", script}, Stdout: &out})
		if err != nil || code != 0 {
			t.Fatalf("exec %q: %d %v", script, code, err)
		}
		return strings.TrimSpace(out.String())
	}
	drivertest.Suite(t, drivertest.Harness{
		Driver: d,
		Assets: hypervisor.BootAssets{Kernel: assets.Kernel, Initramfs: assets.Initramfs},
		Dir:    func(t *testing.T) string { return t.TempDir() },
		Ready:  func(t *testing.T, vm hypervisor.VM) { exec(t, vm, "true") },
		Poke: func(t *testing.T, vm hypervisor.VM, v string) {
			exec(t, vm, "echo "+v+" > /dev/shm/conformance")
		},
		Peek:       func(t *testing.T, vm hypervisor.VM) string { return exec(t, vm, "cat /dev/shm/conformance") },
		MemoryFile: "memory", StateFile: "state",
	})
}
