package bytesize

import (
	"testing"

	"github.com/zygote/zygote/errdefs"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{in: "256MB", want: 256 << 20},
		{in: "256mb", want: 256 << 20},
		{in: "1GB", want: 1 << 30},
		{in: "2G", want: 2 << 30},
		{in: "512M", want: 512 << 20},
		{in: "1 GB", want: 1 << 30},
		{in: "4096", want: 4096},
		{in: "10KB", want: 10 << 10},
		{in: "1.5GB", bad: true},
		{in: "1GiB", bad: true},
		{in: "GB", bad: true},
		{in: "", bad: true},
		{in: "-1GB", bad: true},
		{in: "99999999999TB", bad: true},
	} {
		got, err := Parse(tc.in)
		if tc.bad {
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("Parse(%q) = %d, %v; want InvalidArgument", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestFormat(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0 B"},
		{1024, "1024 B"},
		{1025, "1.0 KB"},
		{256 << 20, "256.0 MB"},
		{1 << 30, "1024.0 MB"},
		{10 << 30, "10.0 GB"},
	} {
		if got := Format(tc.in); got != tc.want {
			t.Errorf("Format(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
