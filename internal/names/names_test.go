package names

import (
	"strings"
	"testing"

	"github.com/zygote/zygote/errdefs"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"web", true},
		{"a", true},
		{"0", true},
		{"web-2", true},
		{"a1-b2-c3", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"-web", false},
		{"web-", false},
		{"Web", false},
		{"web_2", false},
		{"web.2", false},
		{"web 2", false},
		{"wéb", false},
		{"../etc", false},
	} {
		err := Validate("instance name", tc.name)
		if tc.ok && err != nil {
			t.Errorf("Validate(%q) = %v, want ok", tc.name, err)
		}
		if !tc.ok && !errdefs.IsInvalidArgument(err) {
			t.Errorf("Validate(%q) = %v, want InvalidArgument", tc.name, err)
		}
	}
}
