package snapshots

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testdata/v1 is a snapshot directory written by the version-1 code as it
// stood when the manifest still embedded the store's records (commit
// e8c43af): the exact bytes an existing data directory holds.
const v1Dir = "testdata/v1"

// TestReadsVersion1: this binary reads, verifies and understands a
// manifest exactly as version 1 wrote it.
func TestReadsVersion1(t *testing.T) {
	m, err := Read(v1Dir)
	if err != nil {
		t.Fatalf("read a version-1 manifest: %v", err)
	}
	want := Manifest{
		Magic: magic, Version: 1, ID: "c2f8a1d0e9b74c3a8d6e5f4a3b2c1d0e", Name: "warm", Kind: KindStandby,
		SourceInstanceID: "a1b2c3d4e5f60718293a4b5c6d7e8f90", SourceInstanceName: "web",
		Spec: Spec{Hypervisor: "qemu", VCPUs: 2, MemoryBytes: 256 << 20, KernelArgs: "quiet",
			Command: []string{"/bin/sh", "-c", "sleep 1"}, Env: map[string]string{"A": "1"}, Image: "busybox",
			DriverState: json.RawMessage(`{"machine":"q35","accel":"tcg"}`)},
		CacheKey: "k-0123", Hostname: "web", BootID: "boot-42",
		CreatedAt: time.Date(2026, 11, 30, 5, 0, 0, 0, time.UTC),
		Files:     []File{{"console.log", 7}, {"memory", 8192}, {"state", 17}},
		Externals: []External{},
		Checksum:  "d09fc479f4cef363e5bc21fef0967cd0dd0a75bb385216349501286a58c647c9",
	}
	got, _ := json.Marshal(m)
	exp, _ := json.Marshal(want)
	if !bytes.Equal(got, exp) {
		t.Fatalf("read\n%s\nwant\n%s", got, exp)
	}
}

// TestWritesVersion1Unchanged: writing the same snapshot today produces
// the version-1 file byte for byte. If this fails, the format changed:
// bump Version and keep reading version 1 (TestReadsVersion1).
func TestWritesVersion1Unchanged(t *testing.T) {
	old, err := Read(v1Dir)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, f := range old.Files {
		raw, err := os.ReadFile(filepath.Join(v1Dir, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.Name), raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old.Checksum, old.Files = "", nil
	if _, err := Write(dir, old); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, ManifestName))
	want, _ := os.ReadFile(filepath.Join(v1Dir, ManifestName))
	if !bytes.Equal(got, want) {
		t.Fatalf("today's manifest differs from version 1's:\n%s\nwant\n%s", got, want)
	}
}
