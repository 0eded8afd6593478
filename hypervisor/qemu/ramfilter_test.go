package qemu

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// stream builds a QEMU 7.2-shaped migration stream.
type stream struct{ bytes.Buffer }

func (s *stream) be32(v uint32) { binary.Write(s, binary.BigEndian, v) }
func (s *stream) be64(v uint64) { binary.Write(s, binary.BigEndian, v) }
func (s *stream) str(v string)  { s.WriteByte(byte(len(v))); s.WriteString(v) }

// page writes a PAGE (fill != 0) or ZERO record.
func (s *stream) page(block string, cont bool, off uint64, fill byte, zero bool) {
	flags := uint64(ramFlagPage)
	if zero {
		flags = ramFlagZero
	}
	if cont {
		flags |= ramFlagContinue
	}
	s.be64(off | flags)
	if !cont {
		s.str(block)
	}
	if zero {
		s.WriteByte(0)
	} else {
		s.Write(bytes.Repeat([]byte{fill}, guestPage))
	}
}

func (s *stream) eos(section uint32) { s.be64(ramFlagEOS); s.WriteByte(vmFooter); s.be32(section) }

func testStream() []byte {
	var s stream
	s.Write(migrationMagic)
	s.WriteByte(vmConfiguration)
	s.be32(4)
	s.WriteString("q35!")
	s.WriteByte(vmSubsection)
	s.str("configuration/capabilities")
	s.be32(1)
	s.be32(1)
	s.str("x-ignore-shared")
	s.WriteByte(vmSectionStart)
	s.be32(2)
	s.str("ram")
	s.be32(0)
	s.be32(4)
	s.be64((4*guestPage + 2*guestPage) | ramFlagMemSize)
	s.str("ram0")
	s.be64(4 * guestPage)
	s.str("pc.bios")
	s.be64(2 * guestPage)
	s.eos(2)
	s.WriteByte(vmSectionPart)
	s.be32(2)
	s.page("ram0", false, 0, 'a', false)
	s.page("ram0", true, 1*guestPage, 'b', false)
	s.page("ram0", true, 2*guestPage, 0, true)
	s.page("pc.bios", false, 0, 'x', false)
	s.page("ram0", false, 3*guestPage, 'd', false)
	s.eos(2)
	s.WriteByte(vmSectionEnd)
	s.be32(2)
	s.page("pc.bios", false, guestPage, 'y', false)
	s.eos(2)
	s.WriteByte(0x04) // a device's full section: opaque, copied
	s.WriteString("device state bytes")
	return s.Bytes()
}

type record struct {
	block string
	off   uint64
	data  string
}

// parseRecords reads a filtered stream back with the filter (keeping
// everything), recording the records it meets.
func parseRecords(t *testing.T, raw []byte) (out []record, tail string) {
	t.Helper()
	var got bytes.Buffer
	f, err := filterRAM(&got, bytes.NewReader(raw), func(off int64) bool { return true })
	if err != nil {
		t.Fatalf("the filtered stream does not parse: %v", err)
	}
	if !bytes.Equal(got.Bytes(), raw) {
		t.Fatal("a keep-everything filter changed the stream")
	}
	_ = f
	// Walk the records by hand, resolving CONTINUE like QEMU's loader.
	i := bytes.Index(raw, []byte("ram\x00\x00\x00\x00\x00\x00\x00\x04"))
	p := raw[i+11:]
	cur := ""
	for sections := 0; sections < 3; {
		h := binary.BigEndian.Uint64(p)
		p = p[8:]
		flags, off := h&ramFlagMask, h&^uint64(ramFlagMask)
		switch flags &^ ramFlagContinue {
		case ramFlagEOS:
			p = p[5:]
			sections++
			if sections < 3 {
				p = p[5:] // next section header
			}
			continue
		case ramFlagMemSize:
			for total := int64(off); total > 0; {
				n := int(p[0])
				total -= int64(binary.BigEndian.Uint64(p[1+n:]))
				p = p[1+n+8:]
			}
			continue
		}
		if flags&ramFlagContinue == 0 {
			cur, p = string(p[1:1+p[0]]), p[1+p[0]:]
		} else if cur == "" {
			t.Fatal("CONTINUE with no block named before")
		}
		if flags&ramFlagZero != 0 {
			out, p = append(out, record{cur, off, "zero"}), p[1:]
		} else {
			out, p = append(out, record{cur, off, string(p[0])}), p[guestPage:]
		}
	}
	return out, string(p)
}

func TestRAMFilterKeepsOnlyTheGuestsOwnPages(t *testing.T) {
	raw := testStream()
	dirty := map[int64]bool{1 * guestPage: true, 3 * guestPage: true}
	var out bytes.Buffer
	f, err := filterRAM(&out, bytes.NewReader(raw), func(off int64) bool { return dirty[off] })
	if err != nil {
		t.Fatal(err)
	}
	if f.Kept != 2 || f.Dropped != 2 {
		t.Fatalf("kept %d dropped %d ram0 pages, want 2 and 2", f.Kept, f.Dropped)
	}
	recs, tail := parseRecords(t, out.Bytes())
	want := []record{{"ram0", 1 * guestPage, "b"}, {"pc.bios", 0, "x"}, {"ram0", 3 * guestPage, "d"}, {"pc.bios", guestPage, "y"}}
	if len(recs) != len(want) {
		t.Fatalf("records %v, want %v", recs, want)
	}
	for i := range want {
		if recs[i] != want[i] {
			t.Fatalf("record %d = %v, want %v (all: %v)", i, recs[i], want[i], recs)
		}
	}
	if tail != "\x04device state bytes" {
		t.Fatalf("the devices' state was not copied verbatim: %q", tail)
	}
	if out.Len() >= len(raw) {
		t.Fatal("nothing dropped")
	}
}

func TestRAMFilterUnknownStreams(t *testing.T) {
	// Not a QEMU stream, or an unknown configuration subsection: copied
	// verbatim (an unfiltered stream is still a correct one).
	for name, raw := range map[string][]byte{
		"not a migration stream": []byte("something else entirely"),
		"unknown subsection": append(append(append([]byte{}, migrationMagic...), vmConfiguration, 0, 0, 0, 1, 'x', vmSubsection, 3),
			[]byte("new\x00\x00\x00\x01rest of stream")...),
	} {
		var out bytes.Buffer
		if _, err := filterRAM(&out, bytes.NewReader(raw), func(int64) bool { return false }); err != nil || !bytes.Equal(out.Bytes(), raw) {
			t.Errorf("%s: err %v, changed %v", name, err, !bytes.Equal(out.Bytes(), raw))
		}
	}
	// An unsupported RAM record (xbzrle) once pages were dropped: an error.
	raw := testStream()
	i := bytes.LastIndex(raw, []byte{0, 0, 0, 0, 0, 0, 0x10, 0x08}) // the pc.bios page of the end section
	if i < 0 {
		t.Fatal("test stream layout changed")
	}
	raw[i+7] = 0x40
	var out bytes.Buffer
	if _, err := filterRAM(&out, bytes.NewReader(raw), func(int64) bool { return false }); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Fatalf("xbzrle record: %v", err)
	}
}
