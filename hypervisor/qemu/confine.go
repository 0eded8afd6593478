package qemu

import "strings"

// sandboxArgs is QEMU's own seccomp filter (QEMU 7.2: -sandbox): on top of
// the default deny list of obsolete system calls, QEMU may not change its
// uid/gid, fork or exec anything, or change scheduling and CPU affinity.
// None of that is needed here: TAP devices arrive as open fds and no
// helper scripts run.
var sandboxArgs = []string{"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"}

// sandboxSupported reports whether QEMU's -help lists -sandbox (a QEMU
// built without libseccomp does not).
func sandboxSupported(help string) bool {
	return strings.Contains(help, "\n-sandbox ")
}
