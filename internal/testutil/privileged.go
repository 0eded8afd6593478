package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// EnvRequirePrivileged, set to 1, turns every privileged skip into a
// failure: a CI machine that is supposed to run everything must not go
// green by skipping.
const EnvRequirePrivileged = "ZYGOTE_REQUIRE_PRIVILEGED"

// toolPackages names the Debian package that provides each tool the
// helpers run, for the skip message.
var toolPackages = map[string]string{
	"mkfs.xfs":            "xfsprogs",
	"mkfs.btrfs":          "btrfs-progs",
	"mkfs.ext4":           "e2fsprogs",
	"losetup":             "mount",
	"mount":               "mount",
	"ip":                  "iproute2",
	"nsenter":             "util-linux",
	"busybox":             "busybox-static",
	"iptables":            "iptables",
	"/usr/lib/cni/bridge": "containernetworking-plugins",
}

// RequirePrivileged skips t unless the process runs as root and every tool
// in tools is on PATH. why says what the test needs the privilege for; it
// starts the message. With ZYGOTE_REQUIRE_PRIVILEGED=1 the test fails
// instead of skipping.
func RequirePrivileged(t testing.TB, why string, tools ...string) {
	t.Helper()
	if msg := missingPrivilege(tools); msg != "" {
		skipOrFail(t, fmt.Sprintf("%s: %s", why, msg))
	}
}

// missingPrivilege says what is missing to run as a privileged test, or ""
// when nothing is.
func missingPrivilege(tools []string) string {
	var missing []string
	if uid := os.Geteuid(); uid != 0 {
		missing = append(missing, fmt.Sprintf("needs root (running as uid %d)", uid))
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			hint := tool
			if pkg, ok := toolPackages[tool]; ok {
				hint = fmt.Sprintf("%s (apt-get install %s)", tool, pkg)
			}
			missing = append(missing, "needs "+hint)
		}
	}
	return strings.Join(missing, "; ")
}

func skipOrFail(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv(EnvRequirePrivileged) == "1" {
		t.Fatalf("%s (%s=1, so this is a failure, not a skip)", msg, EnvRequirePrivileged)
		return
	}
	t.Skipf("skipping: %s (set %s=1 to make this a failure)", msg, EnvRequirePrivileged)
}
