package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
)

// TestProgramOutput: run shows the program's lines, not zygote-init's or
// the kernel's.
func TestProgramOutput(t *testing.T) {
	var buf bytes.Buffer
	w := programOutput{&buf}
	for _, l := range []string{
		"42",
		"[    6.505829] reboot: Power down",
		`level=INFO msg="agent ready" component=zygote-init took=1s`,
		"[not a kernel line]",
	} {
		fmt.Fprintln(w, l)
	}
	if got := buf.String(); got != "42\n[not a kernel line]\n" {
		t.Errorf("got %q", got)
	}
}

// TestSplitRunArgs: run's positionals are [IMAGE] [-- CMD...].
func TestSplitRunArgs(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		dash  int
		image string
		cmd   []string
		bad   bool
	}{
		{nil, -1, "", nil, false},
		{[]string{"busybox"}, -1, "busybox", nil, false},
		{[]string{"busybox", "sh", "-c", "x"}, 1, "busybox", []string{"sh", "-c", "x"}, false},
		{[]string{"sh", "-c", "x"}, 0, "", []string{"sh", "-c", "x"}, false},
		{[]string{"busybox", "sh"}, -1, "", nil, true},
		{[]string{"busybox"}, 1, "busybox", nil, false},
	} {
		image, cmd, err := splitRunArgs(tc.args, tc.dash)
		if (err != nil) != tc.bad || image != tc.image || !slices.Equal(cmd, tc.cmd) {
			t.Errorf("splitRunArgs(%q, %d) = %q %q %v", tc.args, tc.dash, image, cmd, err)
		}
	}
}

func TestParseVolumeFlags(t *testing.T) {
	got, err := parseVolumeFlags([]string{"data:/data", "ref:/ref:ro", "w:/w:rw"})
	if err != nil || len(got) != 3 || got[0].ReadOnly || !got[1].ReadOnly || got[2].ReadOnly || got[1].VolumeID != "ref" || got[1].MountPath != "/ref" {
		t.Errorf("got %+v %v", got, err)
	}
	for _, bad := range []string{"data", ":/x", "data:", "a:/b:rx", "a:/b:ro:x"} {
		if _, err := parseVolumeFlags([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestNetworkFlags(t *testing.T) {
	for _, tc := range []struct {
		noNetwork, allowPeers bool
		want                  string
	}{
		{false, false, "null"},
		{true, false, `{"enabled":false}`},
		{false, true, `{"allow_peers":true}`},
		{true, true, `{"enabled":false,"allow_peers":true}`},
	} {
		raw, err := json.Marshal(networkFlags(tc.noNetwork, tc.allowPeers))
		if err != nil || string(raw) != tc.want {
			t.Errorf("--no-network=%v --allow-peers=%v: %s %v, want %s", tc.noNetwork, tc.allowPeers, raw, err, tc.want)
		}
	}
}
