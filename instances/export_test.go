package instances

import (
	"slices"

	"github.com/zygote/zygote/store"
)

// RecoveryOps lists the operations recoveryRules has a crash rule for,
// so the external tests can check each has its branches tested.
func RecoveryOps() []store.Op {
	var out []store.Op
	for op := range recoveryRules {
		out = append(out, op)
	}
	slices.Sort(out)
	return out
}
