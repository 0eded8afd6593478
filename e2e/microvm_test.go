package e2e

import (
	"strings"
	"testing"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/internal/testutil"
)

// TestMicrovm: the optional microvm machine boots (with tsc_early_khz under
// TCG), answers exec, parks and restores.
func TestMicrovm(t *testing.T) {
	d := newDaemon(t, testutil.XFS(t))
	d.start()
	in, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: "mv", Hypervisor: "qemu-microvm"})
	if err != nil {
		t.Fatal(err)
	}
	d.waitRunning(in.ID)
	cmdline := d.sh("mv", "echo marker > /dev/shm/m; cat /proc/cmdline")
	if in, _ := d.c.GetInstance(ctx, "mv"); in.Accelerator == "tcg" && !strings.Contains(cmdline, "tsc_early_khz=") {
		t.Fatalf("microvm under TCG without tsc_early_khz: %q", cmdline)
	}
	if _, err := d.c.StandbyInstance(ctx, "mv"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.RestoreInstance(ctx, "mv"); err != nil {
		t.Fatal(err)
	}
	if got := d.sh("mv", "cat /dev/shm/m"); got != "marker" {
		t.Fatalf("after restore: %q", got)
	}
}
