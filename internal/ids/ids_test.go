package ids

import "testing"

func TestNewIsValidAndDistinct(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := New()
		if !Valid(id) {
			t.Fatalf("New() = %q is not Valid", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
}

func TestValid(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"tz4a98xxat96iws9zmbrgj3a", true},
		{"1z4a98xxat96iws9zmbrgj3a", false},
		{"tz4a98xxat96iws9zmbrgj3", false},
		{"tz4a98xxat96iws9zmbrgj3A", false},
		{"tz4a98xxat96iws9zmbrgj3-", false},
		{"", false},
	} {
		if got := Valid(tc.in); got != tc.want {
			t.Errorf("Valid(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
