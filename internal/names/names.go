// Package names validates the user-chosen names of instances and
// snapshots: lowercase letters, digits and dashes, 1–63 characters, not
// starting or ending with a dash (a DNS label, so a name can be a hostname).
package names

import (
	"fmt"
	"regexp"

	"github.com/zygote/zygote/errdefs"
)

// MaxLength is the longest valid name.
const MaxLength = 63

var pattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// Validate returns an errdefs.ErrInvalidArgument error naming the rule a
// bad name breaks; what names the field ("instance name").
func Validate(what, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%s is required: %w", what, errdefs.ErrInvalidArgument)
	case len(name) > MaxLength:
		return fmt.Errorf("%s %q is %d characters, at most %d are allowed: %w", what, name, len(name), MaxLength, errdefs.ErrInvalidArgument)
	case !pattern.MatchString(name):
		return fmt.Errorf("%s %q is invalid: use lowercase letters, digits and dashes, not starting or ending with a dash: %w", what, name, errdefs.ErrInvalidArgument)
	}
	return nil
}
