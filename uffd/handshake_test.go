package uffd

import (
	"strings"
	"testing"

	"github.com/zygote/zygote/errdefs"
)

func TestParseMappings(t *testing.T) {
	const fileSize = 8 << 20
	for _, tc := range []struct {
		name, body string
		wantErr    string // substring; "" means valid
		pageSize   uint64
	}{
		{"one region", `[{"base_host_virt_addr":4096,"size":8388608,"offset":0,"page_size":4096}]`, "", 4096},
		{"page_size_kib holds bytes", `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size_kib":4096}]`, "", 4096},
		{"no page size", `[{"base_host_virt_addr":4096,"size":4096,"offset":0}]`, "", 4096},
		{"two regions", `[{"base_host_virt_addr":1048576,"size":4194304,"offset":0,"page_size":4096},
			{"base_host_virt_addr":1073741824,"size":4194304,"offset":4194304,"page_size":4096}]`, "", 4096},
		{"unknown fields tolerated", `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"new":1}]`, "", 4096},
		{"empty", ``, "empty message", 0},
		{"not json", `hello`, "want a JSON array", 0},
		{"object", `{"base_host_virt_addr":4096}`, "want a JSON array", 0},
		{"truncated", `[{"base_host_virt_addr":4096,`, "decode", 0},
		{"wrong type", `[{"base_host_virt_addr":"x","size":4096,"offset":0}]`, "decode", 0},
		{"no regions", `[]`, "no memory regions", 0},
		{"zero size", `[{"base_host_virt_addr":4096,"size":0,"offset":0}]`, "size 0", 0},
		{"unaligned base", `[{"base_host_virt_addr":4097,"size":4096,"offset":0}]`, "multiples of the page size", 0},
		{"odd page size", `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":3000}]`, "power of two", 0},
		{"sizes disagree", `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"page_size_kib":2097152}]`, "disagree", 0},
		{"beyond file", `[{"base_host_virt_addr":4096,"size":8392704,"offset":0}]`, "beyond the memory file", 0},
		{"overlap in memory", `[{"base_host_virt_addr":4096,"size":8192,"offset":0},{"base_host_virt_addr":8192,"size":4096,"offset":8192}]`, "overlap in memory", 0},
		{"overlap in file", `[{"base_host_virt_addr":4096,"size":8192,"offset":0},{"base_host_virt_addr":65536,"size":4096,"offset":4096}]`, "overlap in file", 0},
		{"overflow", `[{"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0}]`, "overflows", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms, err := ParseMappings([]byte(tc.body), fileSize)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if ps := ms[0].EffectivePageSize(); ps != tc.pageSize {
					t.Fatalf("page size %d, want %d", ps, tc.pageSize)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("err %v is not ErrInvalidArgument", err)
			}
		})
	}
}
