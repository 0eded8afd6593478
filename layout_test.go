// The package layout's import rules (STYLE.md): imports point inward, so
// the manager never learns a driver's quirks and drivers never touch the
// store. A change that breaks a rule fails here, with the rule's reason.
package zygote_test

import (
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
	{"store", []string{"instances", "hypervisor", "api", "clone", "uffd", "guest"}, "the store stores; it orchestrates nothing"},
	{"snapshots", []string{"instances", "hypervisor", "api"}, "the snapshot format knows nothing of who uses it"},
	{"clone", []string{"store", "instances", "hypervisor", "api", "uffd", "guest"}, "clone copies files: stdlib and x/sys only"},
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
						t.Errorf("%s imports %s: %s", pkg, rel, rule.why)
					}
				}
			}
		}
	}
}
