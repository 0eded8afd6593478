package main

import "testing"

func TestMemorySize(t *testing.T) {
	for in, want := range map[string]string{
		"":      "",
		"512":   "512MB",
		"0":     "0MB", // the daemon refuses it: 400 invalid_size
		"1GB":   "1GB",
		"512mb": "512mb",
		" 2G ":  "2G",
		"1.5GB": "1.5GB", // the daemon refuses it, naming the size
	} {
		if got := memorySize(in); got != want {
			t.Errorf("memorySize(%q) = %q, want %q", in, got, want)
		}
	}
}
