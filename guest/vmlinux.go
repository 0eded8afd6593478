package guest

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
)

// lz4LegacyMagic starts the kernel payload of a bzImage built with
// CONFIG_KERNEL_LZ4 (the lz4 "legacy" frame format).
var lz4LegacyMagic = []byte{0x02, 0x21, 0x4c, 0x18}

var otherMagics = []struct {
	name  string
	magic []byte
}{
	{"gzip", []byte{0x1f, 0x8b}},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{"bzip2", []byte("BZh")},
	{"lzma", []byte{0x5d, 0x00, 0x00}},
}

// errNotLZ4 says the payload uses another compression; the bzImage is then
// the kernel to boot.
var errNotLZ4 = errors.New("kernel payload is not LZ4")

// payloadRange locates the compressed kernel inside a bzImage: from the
// boot protocol header (setup_sects, payload_offset, payload_length) when
// present, else by searching for the LZ4 magic. With a header, the last 4
// bytes of the payload are the uncompressed size (little endian), which lz4
// itself does not understand: they are cut off and returned as size (0
// when unknown).
func payloadRange(img []byte) (start, end int, size uint32, err error) {
	if len(img) > 0x250 && string(img[0x202:0x206]) == "HdrS" && binary.LittleEndian.Uint16(img[0x206:]) >= 0x0208 {
		setupSects := int(img[0x1f1])
		if setupSects == 0 {
			setupSects = 4
		}
		start = (setupSects+1)*512 + int(binary.LittleEndian.Uint32(img[0x248:]))
		end = start + int(binary.LittleEndian.Uint32(img[0x24c:]))
		if start < end && end <= len(img) && end-start > 8 {
			if !bytes.HasPrefix(img[start:], lz4LegacyMagic) {
				for _, m := range otherMagics {
					if bytes.HasPrefix(img[start:], m.magic) {
						return 0, 0, 0, fmt.Errorf("%w: it is %s", errNotLZ4, m.name)
					}
				}
				return 0, 0, 0, fmt.Errorf("%w: unknown magic % x", errNotLZ4, img[start:start+4])
			}
			return start, end - 4, binary.LittleEndian.Uint32(img[end-4:]), nil
		}
	}
	i := bytes.Index(img, lz4LegacyMagic)
	if i < 0 {
		return 0, 0, 0, fmt.Errorf("%w: no boot header and no LZ4 magic found", errNotLZ4)
	}
	// Without a header the payload's end is unknown: lz4 stops at the end
	// of its stream and the size is not checked.
	return i, len(img), 0, nil
}

// ExtractVmlinux writes the uncompressed ELF kernel contained in the bzImage
// at bzImage to out (with lz4 -dc). It fails with a clear error when the
// payload is not LZ4 or the result is not an ELF of the announced size.
func ExtractVmlinux(ctx context.Context, bzImage, out string) error {
	img, err := os.ReadFile(bzImage)
	if err != nil {
		return err
	}
	start, end, size, err := payloadRange(img)
	if err != nil {
		return fmt.Errorf("extract vmlinux from %s: %w", bzImage, err)
	}
	lz4, err := requireTool("lz4", "lz4")
	if err != nil {
		return err
	}
	f, err := os.OpenFile(out, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, lz4, "-dc")
	cmd.Stdin = bytes.NewReader(img[start:end])
	cmd.Stdout = f
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("extract vmlinux from %s: lz4 -dc: %w: %s", bzImage, err, bytes.TrimSpace(stderr.Bytes()))
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if size != 0 && int64(size) != st.Size() {
		return fmt.Errorf("extract vmlinux from %s: got %d bytes, the image announces %d", bzImage, st.Size(), size)
	}
	head := make([]byte, 4)
	if _, err := f.ReadAt(head, 0); err != nil || !bytes.Equal(head, []byte("\x7fELF")) {
		return fmt.Errorf("extract vmlinux from %s: the payload is not an ELF image", bzImage)
	}
	return f.Sync()
}

// xenElfnotePhys32Entry is the ELF note (owner "Xen") that carries the PVH
// entry point; QEMU boots an ELF kernel directly only when it has it.
const xenElfnotePhys32Entry = 18

// HasPVHNote reports whether the ELF kernel at path has a PVH entry note.
func HasPVHNote(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	var notes [][]byte
	for _, s := range f.Sections {
		if s.Type == elf.SHT_NOTE {
			if b, err := s.Data(); err == nil {
				notes = append(notes, b)
			}
		}
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_NOTE {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err == nil {
				notes = append(notes, b)
			}
		}
	}
	for _, b := range notes {
		for len(b) >= 12 {
			nameSz := int(f.ByteOrder.Uint32(b[0:]))
			descSz := int(f.ByteOrder.Uint32(b[4:]))
			typ := f.ByteOrder.Uint32(b[8:])
			off := 12
			name := b[off:min(len(b), off+nameSz)]
			off += (nameSz + 3) &^ 3
			off += (descSz + 3) &^ 3
			if bytes.Equal(bytes.TrimRight(name, "\x00"), []byte("Xen")) && typ == xenElfnotePhys32Entry {
				return true, nil
			}
			if off > len(b) {
				break
			}
			b = b[off:]
		}
	}
	return false, nil
}
