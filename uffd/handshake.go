package uffd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/zygote/zygote/errdefs"
)

// Mapping is one element of Firecracker's handshake: guest memory region
// contents for [Offset, Offset+Size) of the memory file belong at
// [BaseHostVirtAddr, BaseHostVirtAddr+Size) of the VMM's address space.
type Mapping struct {
	BaseHostVirtAddr uint64 `json:"base_host_virt_addr"`
	Size             uint64 `json:"size"`
	Offset           uint64 `json:"offset"`
	// PageSize is the region's page size in bytes (4096, or the huge page
	// size of a hugetlbfs-backed guest).
	PageSize uint64 `json:"page_size,omitempty"`
	// PageSizeKiB is what older Firecracker versions send instead of
	// PageSize. Despite its name it holds bytes.
	PageSizeKiB uint64 `json:"page_size_kib,omitempty"`
}

// DefaultPageSize is assumed when a mapping names no page size (the oldest
// Firecracker handshakes carried only address, size and offset).
const DefaultPageSize = 4096

// MaxMappings bounds the handshake; Firecracker sends one region per guest
// memory slot (two for an x86 guest above the 3 GiB MMIO gap).
const MaxMappings = 64

// MaxHandshakeBytes bounds the handshake message.
const MaxHandshakeBytes = 64 << 10

// EffectivePageSize is PageSize, else PageSizeKiB, else DefaultPageSize.
func (m Mapping) EffectivePageSize() uint64 {
	switch {
	case m.PageSize != 0:
		return m.PageSize
	case m.PageSizeKiB != 0:
		return m.PageSizeKiB
	}
	return DefaultPageSize
}

// End is the first address after the region.
func (m Mapping) End() uint64 { return m.BaseHostVirtAddr + m.Size }

func invalid(format string, args ...any) error {
	return fmt.Errorf("uffd: handshake: %s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

// ParseMappings decodes and validates the JSON body of a handshake. Every
// error wraps errdefs.ErrInvalidArgument and says what is wrong. fileSize,
// if positive, is the memory file's size: every region must lie inside it.
func ParseMappings(body []byte, fileSize int64) ([]Mapping, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, invalid("empty message, want a JSON array of memory regions")
	}
	if body[0] != '[' {
		return nil, invalid("want a JSON array of memory regions, got %q", clip(body))
	}
	var ms []Mapping
	if err := json.Unmarshal(body, &ms); err != nil {
		return nil, invalid("decode %q: %v", clip(body), err)
	}
	if err := ValidateMappings(ms, fileSize); err != nil {
		return nil, err
	}
	return ms, nil
}

// ValidateMappings checks a region list: 1..MaxMappings regions, page
// sizes that are powers of two from 4 KiB to 1 GiB, page-aligned addresses,
// offsets and sizes, no overflow, no overlap in memory or in the file, and
// (when fileSize > 0) every region inside the file.
func ValidateMappings(ms []Mapping, fileSize int64) error {
	if len(ms) == 0 {
		return invalid("no memory regions")
	}
	if len(ms) > MaxMappings {
		return invalid("%d memory regions, at most %d", len(ms), MaxMappings)
	}
	for i, m := range ms {
		if m.PageSize != 0 && m.PageSizeKiB != 0 && m.PageSize != m.PageSizeKiB {
			return invalid("region %d: page_size %d and page_size_kib %d disagree", i, m.PageSize, m.PageSizeKiB)
		}
		ps := m.EffectivePageSize()
		if ps < 4096 || ps > 1<<30 || ps&(ps-1) != 0 {
			return invalid("region %d: page size %d is not a power of two in [4096, 1 GiB]", i, ps)
		}
		if m.Size == 0 {
			return invalid("region %d: size 0", i)
		}
		if m.BaseHostVirtAddr%ps != 0 || m.Size%ps != 0 || m.Offset%ps != 0 {
			return invalid("region %d: base %#x, size %#x and offset %#x must be multiples of the page size %d",
				i, m.BaseHostVirtAddr, m.Size, m.Offset, ps)
		}
		if m.End() < m.BaseHostVirtAddr || m.Offset+m.Size < m.Offset {
			return invalid("region %d: range overflows", i)
		}
		if fileSize > 0 && m.Offset+m.Size > uint64(fileSize) {
			return invalid("region %d: file range [%d,%d) beyond the memory file's %d bytes", i, m.Offset, m.Offset+m.Size, fileSize)
		}
	}
	if err := noOverlap(ms, "memory", func(m Mapping) uint64 { return m.BaseHostVirtAddr }); err != nil {
		return err
	}
	return noOverlap(ms, "file", func(m Mapping) uint64 { return m.Offset })
}

func noOverlap(ms []Mapping, what string, start func(Mapping) uint64) error {
	idx := make([]int, len(ms))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return start(ms[idx[a]]) < start(ms[idx[b]]) })
	for k := 1; k < len(idx); k++ {
		prev, cur := ms[idx[k-1]], ms[idx[k]]
		if start(prev)+prev.Size > start(cur) {
			return invalid("regions %d and %d overlap in %s", idx[k-1], idx[k], what)
		}
	}
	return nil
}

func clip(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "…"
	}
	return string(b)
}
