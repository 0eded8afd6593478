package uffd

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// The ioctl numbers and structure layouts of <linux/userfaultfd.h>, written
// out here because golang.org/x/sys/unix has only SYS_USERFAULTFD. Each
// number is _IOC(dir, 0xAA, nr, sizeof(struct)); the sizes are checked by
// TestIoctlNumbers.
const (
	apiVersion = 0xAA

	ioctlAPI         = 0xc018aa3f // _IOWR(0xAA, 0x3F, struct uffdio_api)       24 bytes
	ioctlRegister    = 0xc020aa00 // _IOWR(0xAA, 0x00, struct uffdio_register)  32 bytes
	ioctlUnregister  = 0x8010aa01 // _IOR (0xAA, 0x01, struct uffdio_range)     16 bytes
	ioctlWake        = 0x8010aa02 // _IOR (0xAA, 0x02, struct uffdio_range)     16 bytes
	ioctlCopy        = 0xc028aa03 // _IOWR(0xAA, 0x03, struct uffdio_copy)      40 bytes
	ioctlZeropage    = 0xc020aa04 // _IOWR(0xAA, 0x04, struct uffdio_zeropage)  32 bytes
	ioctlContinue    = 0xc020aa07 // _IOWR(0xAA, 0x07, struct uffdio_continue)  32 bytes
	ioctlDevNew      = 0xaa00     // _IO  (0xAA, 0x00) on /dev/userfaultfd: USERFAULTFD_IOC_NEW
	userModeOnlyFlag = 1          // UFFD_USER_MODE_ONLY
	devUserfaultfd   = "/dev/userfaultfd"
	msgSize          = 32 // sizeof(struct uffd_msg)
)

// Features are UFFD_FEATURE_* bits negotiated by UFFDIO_API.
type Features uint64

// The feature bits (UFFD_FEATURE_*).
const (
	FeaturePagefaultFlagWP  Features = 1 << 0
	FeatureEventFork        Features = 1 << 1
	FeatureEventRemap       Features = 1 << 2
	FeatureEventRemove      Features = 1 << 3
	FeatureMissingHugetlbfs Features = 1 << 4
	FeatureMissingShmem     Features = 1 << 5
	FeatureEventUnmap       Features = 1 << 6
	FeatureSigbus           Features = 1 << 7
	FeatureThreadID         Features = 1 << 8
	FeatureMinorHugetlbfs   Features = 1 << 9
	FeatureMinorShmem       Features = 1 << 10
	FeatureExactAddress     Features = 1 << 11
	FeatureWPHugetlbfsShmem Features = 1 << 12
	FeatureWPUnpopulated    Features = 1 << 13
	FeaturePoison           Features = 1 << 14
	FeatureWPAsync          Features = 1 << 15
	FeatureMove             Features = 1 << 16
)

var featureNames = []string{
	"pagefault_flag_wp", "event_fork", "event_remap", "event_remove",
	"missing_hugetlbfs", "missing_shmem", "event_unmap", "sigbus", "thread_id",
	"minor_hugetlbfs", "minor_shmem", "exact_address", "wp_hugetlbfs_shmem",
	"wp_unpopulated", "poison", "wp_async", "move",
}

// Has reports whether every bit of want is set.
func (f Features) Has(want Features) bool { return f&want == want }

// Names lists the set bits by their kernel names (without UFFD_FEATURE_).
func (f Features) Names() []string {
	var out []string
	for i, n := range featureNames {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	for i := len(featureNames); i < 64; i++ {
		if f&(1<<i) != 0 {
			out = append(out, fmt.Sprintf("bit%d", i))
		}
	}
	return out
}

func (f Features) String() string { return strings.Join(f.Names(), ",") }

// Ioctls is the bitmap of _UFFDIO_* numbers the kernel allows on a uffd
// (from UFFDIO_API) or on a registered range (from UFFDIO_REGISTER).
type Ioctls uint64

// Bit positions of the ioctls in an Ioctls bitmap.
const (
	IoctlRegister     Ioctls = 1 << 0x00
	IoctlUnregister   Ioctls = 1 << 0x01
	IoctlWake         Ioctls = 1 << 0x02
	IoctlCopy         Ioctls = 1 << 0x03
	IoctlZeropage     Ioctls = 1 << 0x04
	IoctlMove         Ioctls = 1 << 0x05
	IoctlWriteProtect Ioctls = 1 << 0x06
	IoctlContinue     Ioctls = 1 << 0x07
	IoctlPoison       Ioctls = 1 << 0x08
	IoctlAPI          Ioctls = 1 << 0x3F
)

// Has reports whether every bit of want is set.
func (i Ioctls) Has(want Ioctls) bool { return i&want == want }

// RegisterMode selects which faults a registered range reports.
type RegisterMode uint64

// UFFDIO_REGISTER_MODE_*.
const (
	RegisterMissing RegisterMode = 1 << 0
	RegisterWP      RegisterMode = 1 << 1
	RegisterMinor   RegisterMode = 1 << 2
)

// CopyMode modifies UFFDIO_COPY, ZeropageMode UFFDIO_ZEROPAGE and
// ContinueMode UFFDIO_CONTINUE.
type (
	CopyMode     uint64
	ZeropageMode uint64
	ContinueMode uint64
)

// Mode bits.
const (
	CopyDontWake     CopyMode     = 1 << 0
	CopyWP           CopyMode     = 1 << 1
	ZeropageDontWake ZeropageMode = 1 << 0
	ContinueDontWake ContinueMode = 1 << 0
	ContinueWP       ContinueMode = 1 << 1
)

// Event is the type byte of a uffd_msg.
type Event uint8

// UFFD_EVENT_*.
const (
	EventPagefault Event = 0x12
	EventFork      Event = 0x13
	EventRemap     Event = 0x14
	EventRemove    Event = 0x15
	EventUnmap     Event = 0x16
)

func (e Event) String() string {
	switch e {
	case EventPagefault:
		return "pagefault"
	case EventFork:
		return "fork"
	case EventRemap:
		return "remap"
	case EventRemove:
		return "remove"
	case EventUnmap:
		return "unmap"
	}
	return fmt.Sprintf("event(%#x)", uint8(e))
}

// Pagefault flags (UFFD_PAGEFAULT_FLAG_*).
const (
	PagefaultWrite uint64 = 1 << 0
	PagefaultWP    uint64 = 1 << 1
	PagefaultMinor uint64 = 1 << 2
)

// Msg is one struct uffd_msg exactly as read(2) returns it: 32 bytes, the
// event type in byte 0 and a 24-byte union from byte 8. Decode it with the
// accessor of its Event.
type Msg [msgSize]byte

// Event is the message type.
func (m *Msg) Event() Event { return Event(m[0]) }

func (m *Msg) u64(off int) uint64 { return binary.NativeEndian.Uint64(m[8+off:]) }

// Pagefault decodes a EventPagefault message: the fault flags, the faulting
// address (page-aligned unless FeatureExactAddress was negotiated) and the
// faulting thread id (only with FeatureThreadID).
func (m *Msg) Pagefault() (flags, address uint64, ptid uint32) {
	return m.u64(0), m.u64(8), binary.NativeEndian.Uint32(m[24:])
}

// Remove decodes EventRemove and EventUnmap: the range [start, end) that
// madvise(MADV_DONTNEED/MADV_REMOVE) or munmap took away.
func (m *Msg) Remove() (start, end uint64) { return m.u64(0), m.u64(8) }

// Remap decodes EventRemap (mremap): old address, new address, length.
func (m *Msg) Remap() (from, to, length uint64) { return m.u64(0), m.u64(8), m.u64(16) }

// ForkFD decodes EventFork: the new uffd installed in the reader's process.
func (m *Msg) ForkFD() int { return int(binary.NativeEndian.Uint32(m[8:])) }

// String renders the message for logs.
func (m *Msg) String() string {
	switch m.Event() {
	case EventPagefault:
		f, a, t := m.Pagefault()
		return fmt.Sprintf("pagefault addr=%#x flags=%#x ptid=%d", a, f, t)
	case EventRemove, EventUnmap:
		s, e := m.Remove()
		return fmt.Sprintf("%s [%#x,%#x)", m.Event(), s, e)
	case EventRemap:
		f, t, l := m.Remap()
		return fmt.Sprintf("remap from=%#x to=%#x len=%#x", f, t, l)
	case EventFork:
		return fmt.Sprintf("fork fd=%d", m.ForkFD())
	}
	return m.Event().String()
}

// NewPagefaultMsg and NewRemoveMsg build messages; they exist for tests of
// code that consumes messages.
func NewPagefaultMsg(address, flags uint64) Msg {
	var m Msg
	m[0] = byte(EventPagefault)
	binary.NativeEndian.PutUint64(m[8:], flags)
	binary.NativeEndian.PutUint64(m[16:], address)
	return m
}

// NewRemoveMsg builds an EventRemove message for [start, end).
func NewRemoveMsg(start, end uint64) Msg {
	var m Msg
	m[0] = byte(EventRemove)
	binary.NativeEndian.PutUint64(m[8:], start)
	binary.NativeEndian.PutUint64(m[16:], end)
	return m
}
