// The package layout's import rules (STYLE.md): imports point inward, so
// the manager never learns a driver's quirks and drivers never touch the
// store. A change that breaks a rule fails here, with the rule's reason.
package zygote_test

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/zygote/zygote/"

var importRules = []struct {
	pkg       string   // package path prefix under the module
	forbidden []string // path prefixes it must not import
	why       string
}{
	{"api", []string{"hypervisor", "store", "clone", "uffd", "guest/initd"}, "the API maps requests to the manager; storage and drivers are behind it"},
	{"instances", []string{"hypervisor/qemu", "hypervisor/firecracker", "api", "cmd", "uffd/pager"}, "the manager sees only the hypervisor contract, never a driver"},
	{"hypervisor", []string{"store", "instances", "api", "cmd"}, "drivers never touch the store or the manager"},
	{"store", []string{"instances", "hypervisor", "api", "clone", "uffd", "guest", "images", "network"}, "the store stores; it orchestrates nothing"},
	{"snapshots", []string{"instances", "hypervisor", "api"}, "the snapshot format knows nothing of who uses it"},
	{"clone", []string{"store", "instances", "hypervisor", "api", "uffd", "guest", "images", "network"}, "clone copies files: stdlib and x/sys only"},
	// images and network are peers of hypervisor and clone: the manager
	// imports them, they import neither the manager nor the API, and they
	// never reach into a driver or the store (STYLE.md package layout).
	{"images", []string{"instances", "api", "cmd", "store", "hypervisor/qemu", "hypervisor/firecracker"}, "images builds root disks; the manager decides when, the store records it"},
	{"network", []string{"instances", "api", "cmd", "store", "hypervisor/qemu", "hypervisor/firecracker"}, "network sets up slots; the manager decides when, the store records it"},
	{"volumes", []string{"instances", "api", "cmd", "store", "hypervisor", "images", "network"}, "volumes keeps data disks; the manager attaches them, its records say who uses them"},
	{"uffd", []string{"store", "instances", "hypervisor", "api", "guest"}, "the pager serves pages; it never sees instances or drivers"},
	{"guest", []string{"store", "instances", "hypervisor", "api", "uffd"}, "the guest side and its host client know nothing of the daemon"},
	{"errdefs", []string{""}, "error classes are a leaf"},
	{"internal/cleanup", []string{""}, "the undo stack is a leaf"},
}

func TestImportRules(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		for _, v := range violations(line) {
			t.Error(v)
		}
	}
}

// violations checks one "package import import..." line against the rules.
func violations(line string) []string {
	var out []string
	fields := strings.Fields(line)
	pkg := strings.TrimPrefix(fields[0], module)
	for _, rule := range importRules {
		if pkg != rule.pkg && !strings.HasPrefix(pkg, rule.pkg+"/") {
			continue
		}
		for _, imp := range fields[1:] {
			rel, ours := strings.CutPrefix(imp, module)
			if !ours {
				continue
			}
			for _, f := range rule.forbidden {
				if f == "" || rel == f || strings.HasPrefix(rel, f+"/") {
					if strings.HasPrefix(rel, rule.pkg) && f != "" {
						continue // a package's own subpackages
					}
					out = append(out, fmt.Sprintf("%s imports %s: %s", pkg, rel, rule.why))
				}
			}
		}
	}
	return out
}

// TestImportRulesCatchViolations runs the checker over made-up import
// lines, so the rules for packages not written yet (images, network) are
// known to bite.
func TestImportRulesCatchViolations(t *testing.T) {
	for _, tc := range []struct {
		line string
		bad  bool
	}{
		{module + "images " + module + "instances", true},
		{module + "images " + module + "store", true},
		{module + "images/oci " + module + "api/client", true},
		{module + "network " + module + "hypervisor/qemu", true},
		{module + "network " + module + "api", true},
		{module + "network " + module + "internal/cleanup " + module + "errdefs", false},
		{module + "images " + module + "clone", false},
		{module + "instances " + module + "images " + module + "network", false},
		{module + "store " + module + "images", true},
	} {
		if got := len(violations(tc.line)) > 0; got != tc.bad {
			t.Errorf("%q: violation = %v, want %v", tc.line, got, tc.bad)
		}
	}
}
