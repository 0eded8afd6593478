package network

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// envInNS marks the re-executed test binary that runs inside its own
// network and mount namespaces.
const envInNS = "ZYGOTE_NETWORK_TEST_IN_NS"

// TestMain re-executes the test binary (as root) in a fresh network
// namespace — "the daemon's" namespace for every test — and a private
// mount namespace, so every interface, rule, route and pinned namespace the
// tests make vanishes with the process and nothing reaches the host's
// network.
func TestMain(m *testing.M) {
	if os.Getenv(envInNS) == "" && os.Geteuid() == 0 {
		cmd := exec.Command(os.Args[0], os.Args[1:]...)
		cmd.Env = append(os.Environ(), envInNS+"=1")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNET | unix.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Run(); err != nil {
			if ee, ok := err.(*exec.ExitError); ok {
				os.Exit(ee.ExitCode())
			}
			fmt.Fprintln(os.Stderr, "network tests: re-exec in a private network namespace:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv(envInNS) != "" {
		// Mounts made here (pinned namespaces) must not propagate to the
		// host's mount namespace.
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			fmt.Fprintln(os.Stderr, "network tests: make / private:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if topoDir != "" {
		removeNS(topoDir + "/upstream")
		os.RemoveAll(topoDir)
	}
	os.Exit(code)
}
