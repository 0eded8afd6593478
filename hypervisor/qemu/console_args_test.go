package qemu

import (
	"strings"
	"testing"

	"github.com/zygote/zygote/hypervisor"
)

// The console is a socket the daemon drains into a capped log, never a
// file QEMU writes itself (a guest printing forever would fill the disk).
func TestConsoleIsASocketNotAFile(t *testing.T) {
	args := strings.Join(buildArgs(hypervisor.Spec{ID: "x", Dir: "/d", VCPUs: 1, MemoryBytes: 64 << 20}, driverState{Version: 1, Machine: "q35", Accel: "tcg"}, false), " ")
	if !strings.Contains(args, "-chardev socket,id=con0,path=/d/console.sock,server=on,wait=on") || !strings.Contains(args, "-serial chardev:con0") {
		t.Fatalf("console not on a socket: %s", args)
	}
	if strings.Contains(args, "-chardev file") || strings.Contains(args, hypervisor.ConsoleLog) {
		t.Fatalf("QEMU writes a file itself: %s", args)
	}
	if err := checkPaths("/" + strings.Repeat("d", 107-len("/console.sock"))); err == nil {
		t.Fatal("an over-long console socket path passed")
	}
}

func TestSandboxSupported(t *testing.T) {
	for help, want := range map[string]bool{
		"-name string1\n-sandbox on[,obsolete=allow|deny]\n": true,
		"-name string1\n-smp n\n":                            false,
	} {
		if got := sandboxSupported(help); got != want {
			t.Errorf("sandboxSupported(%q) = %v", help, got)
		}
	}
}
