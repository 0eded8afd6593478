package main

import (
	"fmt"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/instances"
)

// forkMemoryFlag is `serve --fork-memory owned|shared`: the memory mode of
// a fork that names none (instances.Config.ForkMemory), refused when
// parsed if it is neither.
type forkMemoryFlag struct{ mode *instances.MemoryMode }

func (f forkMemoryFlag) String() string {
	if f.mode == nil {
		return ""
	}
	return string(*f.mode)
}

func (f forkMemoryFlag) Set(s string) error {
	m, err := instances.ParseMemoryMode(s)
	if err != nil {
		return err
	}
	if m == "" {
		return fmt.Errorf("want shared or owned: %w", errdefs.ErrInvalidArgument)
	}
	*f.mode = m
	return nil
}

func (forkMemoryFlag) Type() string { return "owned|shared" }
