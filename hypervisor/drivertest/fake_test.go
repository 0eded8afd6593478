package drivertest

import (
	"testing"

	"github.com/zygote/zygote/hypervisor"
)

// TestFakeConformance holds the double to the contract real drivers meet.
func TestFakeConformance(t *testing.T) {
	Suite(t, Harness{
		Driver: NewFake(), MemoryBytes: 64 << 20,
		Dir:   func(t *testing.T) string { return t.TempDir() },
		Ready: func(*testing.T, hypervisor.VM) {},
		Poke: func(t *testing.T, vm hypervisor.VM, v string) {
			if err := vm.(*FakeVM).GuestWrite(4096, []byte(v)); err != nil {
				t.Fatal(err)
			}
		},
		Peek: func(t *testing.T, vm hypervisor.VM) string {
			b, err := vm.(*FakeVM).GuestRead(4096, 13)
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		},
		MemoryFile: MemoryFile, StateFile: StateFile,
	})
}
