package e2e

import (
	"testing"
	"time"

	"github.com/zygote/zygote/api"
	"github.com/zygote/zygote/internal/testutil"
)

// TestRestandbyWritesAboutWhatTheGuestDirtied: a restored 256 MiB guest
// that dirties 1 % of its RAM (2 MiB into its tmpfs) is parked again, and
// the data disk writes less than 4× the dirtied bytes. It was ≈20×: QEMU's
// madvise(MADV_HUGEPAGE) and boot-time sequential faults gave the memory
// file large page-cache folios (up to 2 MiB), and a 4 KiB guest write made
// the re-standby write the whole folio (README, "Re-standby writes").
func TestRestandbyWritesAboutWhatTheGuestDirtied(t *testing.T) {
	d := newDaemon(t, testutil.XFS(t))
	d.start()
	const name = "rw"
	if _, err := d.c.CreateInstance(ctx, api.CreateInstanceRequest{Name: name, Size: "256MB"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.WaitForState(ctx, name, "Running", 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	d.sh(name, "mount -o remount,size=90% /dev/shm; dd if=/dev/zero of=/dev/shm/warm bs=1M count=32 2>/dev/null; rm /dev/shm/warm")
	for k := 0; k < 2; k++ {
		if _, err := d.c.StandbyInstance(ctx, name); err != nil {
			t.Fatal(err)
		}
		if _, err := d.c.RestoreInstance(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	const dirtied = 2 << 20
	d.sh(name, "dd if=/dev/zero of=/dev/shm/dirty bs=1M count=2 2>/dev/null")
	before := loopWritten(t, d.dataDir)
	if _, err := d.c.StandbyInstance(ctx, name); err != nil {
		t.Fatal(err)
	}
	written := loopWritten(t, d.dataDir) - before
	t.Logf("re-standby wrote %.1f MiB for %.1f MiB dirtied (%.2f×)", float64(written)/(1<<20), float64(dirtied)/(1<<20), float64(written)/dirtied)
	if written > 4*dirtied {
		t.Fatalf("re-standby wrote %d bytes for %d dirtied: over 4×", written, dirtied)
	}
}
