package main

import "testing"

func TestParseCpArg(t *testing.T) {
	for _, tc := range []struct {
		arg, name, path string
		remote          bool
	}{
		{"web:/etc/hosts", "web", "/etc/hosts", true},
		{"web:", "web", "/", true},
		{"./file:with:colons", "", "./file:with:colons", false},
		{"/abs:path", "", "/abs:path", false},
		{"dir/x:y", "", "dir/x:y", false},
		{"plain", "", "plain", false},
		{".", "", ".", false},
		{":nope", "", ":nope", false},
	} {
		name, path, remote := parseCpArg(tc.arg)
		if name != tc.name || path != tc.path || remote != tc.remote {
			t.Errorf("parseCpArg(%q) = %q %q %v, want %q %q %v", tc.arg, name, path, remote, tc.name, tc.path, tc.remote)
		}
	}
}
