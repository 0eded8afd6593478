package guest

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func needTool(t *testing.T, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed (Debian package %s)", name, pkg)
	}
}

// fakeKernelELF is an "uncompressed kernel": an ELF with a PVH note and
// some bulk.
func fakeKernelELF() []byte {
	return makeELF(2, pvhNote(), testSection{name: ".text", typ: 1, data: bytes.Repeat([]byte("kernel text "), 40000)})
}

func lz4Legacy(t *testing.T, data []byte) []byte {
	t.Helper()
	cmd := exec.Command("lz4", "-l", "-c", "-9")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("lz4 -l: %v", err)
	}
	if !bytes.HasPrefix(out, lz4LegacyMagic) {
		t.Fatalf("lz4 -l output starts with % x", out[:4])
	}
	return out
}

// makeBzImage builds a bzImage-shaped blob: a setup area with a boot
// protocol header, then the payload followed by its uncompressed size, as
// the kernel's build does.
func makeBzImage(payload []byte, size uint32) []byte {
	const setupSects = 3
	img := make([]byte, (setupSects+1)*512)
	img[0x1f1] = setupSects
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x206:], 0x020f)
	const payloadOffset = 0x1234
	binary.LittleEndian.PutUint32(img[0x248:], payloadOffset)
	binary.LittleEndian.PutUint32(img[0x24c:], uint32(len(payload)+4))
	img = append(img, make([]byte, payloadOffset)...) // the decompressor stub
	img = append(img, payload...)
	img = binary.LittleEndian.AppendUint32(img, size)
	return append(img, bytes.Repeat([]byte{0xcc}, 700)...) // trailing data after the payload
}

func TestExtractVmlinux(t *testing.T) {
	needTool(t, "lz4", "lz4")
	elf := fakeKernelELF()
	dir := t.TempDir()
	ctx := context.Background()

	img := filepath.Join(dir, "vmlinuz")
	os.WriteFile(img, makeBzImage(lz4Legacy(t, elf), uint32(len(elf))), 0o644)
	out := filepath.Join(dir, "vmlinux")
	if err := ExtractVmlinux(ctx, img, out); err != nil {
		t.Fatalf("ExtractVmlinux: %v", err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, elf) {
		t.Fatalf("extracted %d bytes, want the %d-byte ELF", len(got), len(elf))
	}
	if pvh, err := HasPVHNote(out); err != nil || !pvh {
		t.Errorf("HasPVHNote = %v, %v", pvh, err)
	}

	// No boot header: found by its magic.
	raw := append(bytes.Repeat([]byte{0x90}, 333), lz4Legacy(t, elf)...)
	os.WriteFile(img, raw, 0o644)
	if err := ExtractVmlinux(ctx, img, out); err != nil {
		t.Fatalf("ExtractVmlinux without header: %v", err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, elf) {
		t.Fatal("wrong bytes without header")
	}

	// The size trailer must match.
	os.WriteFile(img, makeBzImage(lz4Legacy(t, elf), uint32(len(elf)+1)), 0o644)
	if err := ExtractVmlinux(ctx, img, out); err == nil {
		t.Error("size mismatch accepted")
	}
	// Not an ELF inside.
	os.WriteFile(img, makeBzImage(lz4Legacy(t, []byte("not an elf at all")), 17), 0o644)
	if err := ExtractVmlinux(ctx, img, out); err == nil {
		t.Error("non-ELF payload accepted")
	}
	// Another compression: a clear errNotLZ4.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(elf)
	zw.Close()
	os.WriteFile(img, makeBzImage(gz.Bytes(), uint32(len(elf))), 0o644)
	if err := ExtractVmlinux(ctx, img, out); !errors.Is(err, errNotLZ4) {
		t.Errorf("gzip payload: %v, want errNotLZ4", err)
	}
}

func TestHasPVHNoteFalse(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k")
	os.WriteFile(p, makeELF(2, testSection{name: ".text", typ: 1, data: []byte{1, 2, 3}}), 0o644)
	if pvh, err := HasPVHNote(p); err != nil || pvh {
		t.Errorf("HasPVHNote = %v, %v; want false", pvh, err)
	}
}
