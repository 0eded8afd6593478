package qemu

import (
	"encoding/json"
	"fmt"

	"github.com/zygote/zygote/errdefs"
)

// driverStateVersion is bumped when driverState changes incompatibly.
const driverStateVersion = 1

// driverState pins the machine description chosen at first boot, so a
// restore reproduces the command line exactly: QEMU refuses (or worse,
// misloads) a migration stream from a different machine, accelerator or
// device set. The manager stores it without reading it.
type driverState struct {
	Version int    `json:"version"`
	Machine string `json:"machine"`
	Accel   string `json:"accel"`
	// TSCKHz is passed as tsc_early_khz to microvm guests under TCG, which
	// otherwise hang at boot about one time in five calibrating the TSC.
	TSCKHz      int    `json:"tsc_khz,omitempty"`
	QEMUVersion string `json:"qemu_version,omitempty"`
}

func decodeDriverState(raw json.RawMessage) (driverState, error) {
	var st driverState
	if len(raw) == 0 {
		return st, fmt.Errorf("qemu: no driver state recorded for this instance: %w", errdefs.ErrInvalidArgument)
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, fmt.Errorf("qemu: decode driver state: %w", err)
	}
	if st.Version != driverStateVersion {
		return st, fmt.Errorf("qemu: driver state version %d, this binary understands %d: %w", st.Version, driverStateVersion, errdefs.ErrNotImplemented)
	}
	return st, nil
}
