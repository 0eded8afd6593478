package qemu

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// A sharing VM (guest RAM a private map of a shared memory file) saves
// its RAM in the migration stream: QEMU 7.2 streams every page of a
// private mapping. Most of them are the shared file's own bytes, which
// every restore maps again anyway. ramFilter drops, as the stream passes
// from QEMU to the state file, every page record of the guest-RAM block
// whose page the guest never wrote: the state keeps exactly the VM's own
// pages, and its size follows what the guest dirtied, not its RAM size.
//
// Which pages the guest wrote is read from /proc/<pid>/pagemap over the
// RAM mapping while the VM is paused (dirtyPages): a page the guest wrote
// was copied on write into anonymous memory, so its entry is present
// (bit 63) and not file-backed (bit 61 clear), or swapped (bit 62).
//
// The stream format (QEMU 7.2, migration/savevm.c and migration/ram.c,
// precopy, no multifd, compression or xbzrle, x-ignore-shared off):
//
//	"QEVM" be32(3)
//	0x07 configuration: be32 len, name, subsections (0x05 …)
//	0x01 section start: be32 id, u8 len, "ram", be32 instance, be32 version
//	     RAM records … EOS, then 0x7e be32 id (footer)
//	0x02 section part / 0x03 section end: be32 id, RAM records … EOS, footer
//	… every other device's state (0x04 full sections), 0x1f vmdesc: copied
//
// A RAM record is be64 (offset | flags); without flag CONTINUE it names
// its block (u8 len, idstr); PAGE carries 4096 bytes, ZERO one byte,
// MEM_SIZE the block list. The filter re-states the block on the first
// record it keeps in each section (a dropped record may have been the one
// that named it). Anything it does not recognise before the RAM records
// makes it copy the rest verbatim (a complete, unfiltered stream);
// anything unknown among the RAM records fails the save.

const (
	ramFlagZero     = 0x02
	ramFlagMemSize  = 0x04
	ramFlagPage     = 0x08
	ramFlagEOS      = 0x10
	ramFlagContinue = 0x20
	ramFlagMask     = 0xfff // below TARGET_PAGE_BITS (12) on x86

	vmSectionStart  = 0x01
	vmSectionPart   = 0x02
	vmSectionEnd    = 0x03
	vmConfiguration = 0x07
	vmSubsection    = 0x05
	vmFooter        = 0x7e

	guestPage = 4096
)

// ramBlockID is the guest RAM block of the memory backend (id=ram0).
const ramBlockID = "ram0"

// ramFilter copies a migration stream, keeping of block ramBlockID only
// the pages keep reports.
type ramFilter struct {
	keep func(off int64) bool
	r    *bufio.Reader
	w    *bufio.Writer
	// last is the block the output's previous kept record named, per
	// section ("" at each section's start).
	last string
	cur  string // the block the input's records are in
	// Dropped and Kept count page records of ramBlockID.
	Dropped, Kept int64
}

func filterRAM(dst io.Writer, src io.Reader, keep func(off int64) bool) (*ramFilter, error) {
	f := &ramFilter{keep: keep, r: bufio.NewReaderSize(src, 1<<20), w: bufio.NewWriterSize(dst, 1<<20)}
	err := f.run()
	if ferr := f.w.Flush(); err == nil {
		err = ferr
	}
	return f, err
}

func (f *ramFilter) read(n int) ([]byte, error) {
	b := make([]byte, n)
	_, err := io.ReadFull(f.r, b)
	return b, err
}

func (f *ramFilter) copyN(n int) ([]byte, error) {
	b, err := f.read(n)
	if err == nil {
		_, err = f.w.Write(b)
	}
	return b, err
}

func (f *ramFilter) copyBE32() (uint32, error) {
	b, err := f.copyN(4)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(b), nil
}

// copyStr copies a u8-length-prefixed string.
func (f *ramFilter) copyStr() (string, error) {
	n, err := f.copyN(1)
	if err != nil {
		return "", err
	}
	s, err := f.copyN(int(n[0]))
	return string(s), err
}

// passthrough copies the rest of the stream verbatim.
func (f *ramFilter) passthrough() error {
	_, err := io.Copy(f.w, f.r)
	return err
}

func (f *ramFilter) run() error {
	head, err := f.copyN(len(migrationMagic))
	if err != nil {
		return fmt.Errorf("stream header: %w", err)
	}
	if !bytes.Equal(head, migrationMagic) {
		return f.passthrough()
	}
	ramSection := uint32(0)
	inRAM := false
	for {
		t, err := f.r.ReadByte()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		f.w.WriteByte(t)
		switch {
		case t == vmConfiguration && !inRAM:
			if ok, err := f.configuration(); err != nil || !ok {
				if err != nil {
					return err
				}
				return f.passthrough()
			}
		case t == vmSectionStart && !inRAM:
			id, err := f.copyBE32()
			if err != nil {
				return err
			}
			name, err := f.copyStr()
			if err != nil {
				return err
			}
			if _, err := f.copyN(8); err != nil { // instance id, version id
				return err
			}
			if name != "ram" {
				return f.passthrough() // not a stream this filter knows
			}
			ramSection, inRAM = id, true
			if err := f.ramRecords(); err != nil {
				return err
			}
		case (t == vmSectionPart || t == vmSectionEnd) && inRAM:
			id, err := f.copyBE32()
			if err != nil {
				return err
			}
			if id != ramSection {
				return fmt.Errorf("migration stream: section %d among the RAM sections (%d)", id, ramSection)
			}
			if err := f.ramRecords(); err != nil {
				return err
			}
			if t == vmSectionEnd {
				return f.passthrough() // the devices' state follows: copied
			}
		case inRAM:
			return fmt.Errorf("migration stream: section type %#x among the RAM sections", t)
		default:
			return f.passthrough()
		}
	}
}

// configuration copies the configuration section; false: a subsection
// it does not know (the caller copies the rest verbatim).
func (f *ramFilter) configuration() (bool, error) {
	n, err := f.copyBE32()
	if err != nil {
		return false, err
	}
	if _, err := f.copyN(int(n)); err != nil {
		return false, err
	}
	for {
		b, err := f.r.Peek(1)
		if err != nil || b[0] != vmSubsection {
			return err == nil, err
		}
		f.copyN(1)
		name, err := f.copyStr()
		if err != nil {
			return false, err
		}
		if _, err := f.copyN(4); err != nil { // version
			return false, err
		}
		switch name {
		case "configuration/target-page-bits":
			_, err = f.copyN(4)
		case "configuration/uuid":
			_, err = f.copyN(16)
		case "configuration/capabilities":
			var count uint32
			if count, err = f.copyBE32(); err == nil {
				for i := uint32(0); i < count && err == nil; i++ {
					_, err = f.copyStr()
				}
			}
		default:
			return false, nil
		}
		if err != nil {
			return false, err
		}
	}
}

// ramRecords filters one RAM section's records up to EOS, and copies its
// footer.
func (f *ramFilter) ramRecords() error {
	f.last = ""
	for {
		hb, err := f.read(8)
		if err != nil {
			return fmt.Errorf("RAM record: %w", err)
		}
		h := binary.BigEndian.Uint64(hb)
		flags, off := h&ramFlagMask, h&^uint64(ramFlagMask)
		switch kind := flags &^ ramFlagContinue; kind {
		case ramFlagEOS:
			f.w.Write(hb)
			if b, err := f.r.Peek(1); err == nil && b[0] == vmFooter {
				if _, err := f.copyN(5); err != nil {
					return err
				}
			}
			return nil
		case ramFlagMemSize:
			f.w.Write(hb)
			for total := int64(off); total > 0; {
				if _, err := f.copyStr(); err != nil {
					return err
				}
				lb, err := f.copyN(8)
				if err != nil {
					return err
				}
				total -= int64(binary.BigEndian.Uint64(lb))
			}
		case ramFlagPage, ramFlagZero:
			if flags&ramFlagContinue == 0 {
				n, err := f.read(1)
				if err != nil {
					return err
				}
				id, err := f.read(int(n[0]))
				if err != nil {
					return err
				}
				f.cur = string(id)
			} else if f.cur == "" {
				return errors.New("RAM record continues no block")
			}
			size := 1
			if kind == ramFlagPage {
				size = guestPage
			}
			payload, err := f.read(size)
			if err != nil {
				return err
			}
			if f.cur == ramBlockID {
				if !f.keep(int64(off)) {
					f.Dropped++
					continue
				}
				f.Kept++
			}
			if f.cur == f.last {
				binary.BigEndian.PutUint64(hb, h|ramFlagContinue)
				f.w.Write(hb)
			} else {
				binary.BigEndian.PutUint64(hb, h&^ramFlagContinue)
				f.w.Write(hb)
				f.w.WriteByte(byte(len(f.cur)))
				f.w.WriteString(f.cur)
				f.last = f.cur
			}
			f.w.Write(payload)
		default:
			return fmt.Errorf("RAM record with flags %#x: not supported by the filter", flags)
		}
	}
}

// Page-map entry bits (Documentation/admin-guide/mm/pagemap.rst).
const (
	pmPresent  = 1 << 63
	pmSwapped  = 1 << 62
	pmFilePage = 1 << 61
)

// dirtyPages returns, for the guest-RAM mapping of memPath in process pid,
// which 4 KiB pages (by offset in the file) the process holds as its own
// anonymous copies: the pages its guest wrote.
func dirtyPages(pid int, memPath string) (func(off int64) bool, int64, error) {
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, 0, err
	}
	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		return nil, 0, err
	}
	defer pm.Close()
	dirty := map[int64]bool{}
	found := false
	for _, line := range strings.Split(string(maps), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 6 || fields[5] != memPath {
			continue
		}
		found = true
		var start, end uint64
		if _, err := fmt.Sscanf(fields[0], "%x-%x", &start, &end); err != nil {
			return nil, 0, fmt.Errorf("maps line %q: %w", line, err)
		}
		fileOff, err := strconv.ParseUint(fields[2], 16, 64)
		if err != nil {
			return nil, 0, err
		}
		const chunk = 1 << 16 // entries per read (512 KiB)
		buf := make([]byte, 8*chunk)
		for addr := start; addr < end; {
			n := min(chunk, int((end-addr)/guestPage))
			if _, err := pm.ReadAt(buf[:8*n], int64(addr/guestPage)*8); err != nil {
				return nil, 0, fmt.Errorf("read pagemap: %w", err)
			}
			for i := 0; i < n; i++ {
				e := binary.LittleEndian.Uint64(buf[8*i:])
				if e&pmSwapped != 0 || (e&pmPresent != 0 && e&pmFilePage == 0) {
					dirty[int64(fileOff+addr-start)+int64(i)*guestPage] = true
				}
			}
			addr += uint64(n) * guestPage
		}
	}
	if !found {
		return nil, 0, fmt.Errorf("process %d maps no %s", pid, filepath.Base(memPath))
	}
	return func(off int64) bool { return dirty[off] }, int64(len(dirty)) * guestPage, nil
}
