package guest

import (
	"bytes"
	"encoding/binary"
)

// testSection is a section of a synthetic ELF file.
type testSection struct {
	name string
	typ  uint32 // SHT_*
	data []byte
}

// makeELF builds a minimal little-endian x86-64 ELF64 file with the given
// sections (enough for debug/elf: .modinfo of a module, .notes of a kernel).
func makeELF(etype uint16, sections ...testSection) []byte {
	le := binary.LittleEndian
	var shstr bytes.Buffer
	shstr.WriteByte(0)
	nameOff := make([]uint32, len(sections)+1)
	for i, s := range sections {
		nameOff[i] = uint32(shstr.Len())
		shstr.WriteString(s.name)
		shstr.WriteByte(0)
	}
	nameOff[len(sections)] = uint32(shstr.Len())
	shstr.WriteString(".shstrtab\x00")
	all := append(append([]testSection(nil), sections...), testSection{name: ".shstrtab", typ: 3, data: shstr.Bytes()})

	var body bytes.Buffer
	offs := make([]uint64, len(all))
	for i, s := range all {
		for body.Len()%8 != 0 {
			body.WriteByte(0)
		}
		offs[i] = 64 + uint64(body.Len())
		body.Write(s.data)
	}
	for body.Len()%8 != 0 {
		body.WriteByte(0)
	}
	shoff := 64 + uint64(body.Len())

	h := make([]byte, 64)
	copy(h, "\x7fELF")
	h[4], h[5], h[6] = 2, 1, 1 // 64-bit, little endian, version
	le.PutUint16(h[16:], etype)
	le.PutUint16(h[18:], 62) // EM_X86_64
	le.PutUint32(h[20:], 1)
	le.PutUint64(h[40:], shoff)
	le.PutUint16(h[52:], 64) // ehsize
	le.PutUint16(h[54:], 56) // phentsize
	le.PutUint16(h[58:], 64) // shentsize
	le.PutUint16(h[60:], uint16(len(all)+1))
	le.PutUint16(h[62:], uint16(len(all))) // shstrndx

	out := append(h, body.Bytes()...)
	out = append(out, make([]byte, 64)...) // SHN_UNDEF
	for i, s := range all {
		sh := make([]byte, 64)
		le.PutUint32(sh[0:], nameOff[i])
		le.PutUint32(sh[4:], s.typ)
		le.PutUint64(sh[24:], offs[i])
		le.PutUint64(sh[32:], uint64(len(s.data)))
		le.PutUint64(sh[48:], 1)
		out = append(out, sh...)
	}
	return out
}

// modinfo is the .modinfo of a fake module.
func modinfo(name string, depends ...string) testSection {
	var b bytes.Buffer
	b.WriteString("license=GPL\x00")
	b.WriteString("depends=")
	for i, d := range depends {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(d)
	}
	b.WriteByte(0)
	b.WriteString("name=" + name + "\x00")
	return testSection{name: ".modinfo", typ: 1, data: b.Bytes()}
}

// pvhNote is a .notes section with the Xen PVH entry note.
func pvhNote() testSection {
	var b bytes.Buffer
	le := binary.LittleEndian
	note := func(typ uint32, desc []byte) {
		var h [12]byte
		le.PutUint32(h[0:], 4) // "Xen\0"
		le.PutUint32(h[4:], uint32(len(desc)))
		le.PutUint32(h[8:], typ)
		b.Write(h[:])
		b.WriteString("Xen\x00")
		b.Write(desc)
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	note(6, []byte("linux\x00"))                 // XEN_ELFNOTE_GUEST_OS
	note(xenElfnotePhys32Entry, make([]byte, 8)) // the PVH entry
	return testSection{name: ".notes", typ: 7, data: b.Bytes()}
}
