package snapshots

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/errdefs"
)

func writeSnapshot(t *testing.T) (string, Manifest) {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "memory"), make([]byte, 8192), 0o600)
	os.WriteFile(filepath.Join(dir, "state"), []byte("QEVM"), 0o600)
	m := Manifest{ID: "snap1", Kind: KindStandby, SourceInstanceID: "i1", SourceInstanceName: "web",
		Spec: Spec{Hypervisor: "qemu", VCPUs: 1, MemoryBytes: 256 << 20}, CacheKey: "k1", CreatedAt: time.Now().UTC()}
	size, err := Write(dir, m)
	if err != nil {
		t.Fatal(err)
	}
	if size < 8192 {
		t.Fatalf("size = %d, want at least the payload", size)
	}
	return dir, m
}

func TestRoundTrip(t *testing.T) {
	dir, m := writeSnapshot(t)
	got, err := Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != m.ID || got.CacheKey != "k1" || got.Spec.MemoryBytes != 256<<20 || !got.HasFile("memory") || !got.HasFile("state") || got.HasFile(ManifestName) {
		t.Fatalf("read back %+v", got)
	}
}

func TestReadRefusesDamage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(dir string)
		want   string
		class  error
	}{
		{"no manifest", func(d string) { os.Remove(filepath.Join(d, ManifestName)) }, "no manifest", errdefs.ErrInvalidState},
		{"garbage", func(d string) { os.WriteFile(filepath.Join(d, ManifestName), []byte("{"), 0o600) }, "corrupt", errdefs.ErrInvalidState},
		{"edited", func(d string) { editManifest(d, func(m map[string]any) { m["cache_key"] = "forged" }) }, "checksum", errdefs.ErrInvalidState},
		{"newer version", func(d string) { editManifest(d, func(m map[string]any) { m["version"] = 99 }) }, "format version 99", errdefs.ErrNotImplemented},
		{"wrong magic", func(d string) { editManifest(d, func(m map[string]any) { m["magic"] = "x" }) }, "not a zygote snapshot", errdefs.ErrInvalidState},
		{"missing file", func(d string) { os.Remove(filepath.Join(d, "memory")) }, "memory is missing", errdefs.ErrInvalidState},
		{"truncated file", func(d string) { os.Truncate(filepath.Join(d, "memory"), 10) }, "memory is 10 bytes", errdefs.ErrInvalidState},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, _ := writeSnapshot(t)
			tc.damage(dir)
			_, err := Read(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errdefs.IsInvalidState(err) && !errdefs.IsNotImplemented(err) {
				t.Fatalf("Read = %v, want %q", err, tc.want)
			}
			if tc.class == errdefs.ErrNotImplemented && !errdefs.IsNotImplemented(err) {
				t.Fatalf("Read = %v, want NotImplemented", err)
			}
		})
	}
}

func editManifest(dir string, edit func(map[string]any)) {
	p := filepath.Join(dir, ManifestName)
	raw, _ := os.ReadFile(p)
	var m map[string]any
	json.Unmarshal(raw, &m)
	edit(m)
	raw, _ = json.Marshal(m)
	os.WriteFile(p, raw, 0o600)
}
