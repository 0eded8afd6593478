//go:build linux

package harness

import (
	"os"
	"testing"

	"github.com/zygote/zygote/uffd"
)

// Require skips the test unless this process can create a userfaultfd (the
// harness must); with ZYGOTE_REQUIRE_PRIVILEGED=1 it fails instead.
func Require(tb testing.TB) {
	tb.Helper()
	if s := uffd.Probe(); !s.Available() {
		if os.Getenv("ZYGOTE_REQUIRE_PRIVILEGED") == "1" {
			tb.Fatalf("uffd: needs root or /dev/userfaultfd: %v", s.Err())
		}
		tb.Skipf("uffd: needs root or /dev/userfaultfd: %v", s.Err())
	}
}
