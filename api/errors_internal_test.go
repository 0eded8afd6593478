package api

import "testing"

func TestRedactPaths(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"write /var/lib/zygote/instances/x/state: no space left on device", "write <path>: no space left on device"},
		{`open "/tmp/zygote-123/db": permission denied`, `open "<path>": permission denied`},
		{"clone: copy /data/z/instances/a/memory (no space)", "clone: copy <path> (no space)"},
		{"dial unix /run/zygote/x.sock.", "dial unix <path>."},
		{"no route for GET /nope: not found", "no route for GET /nope: not found"},
		{"PUT is not allowed on /instances/web/start", "PUT is not allowed on /instances/web/start"},
		{"size 1.0 GB/s is odd, 3/4 of it", "size 1.0 GB/s is odd, 3/4 of it"},
		{"/usr/bin/qemu-system-x86_64 failed", "<path> failed"},
		{"GET http://127.0.0.1:5000/v2/a/b/manifests/x: MANIFEST_UNKNOWN", "GET http://127.0.0.1:5000/v2/a/b/manifests/x: MANIFEST_UNKNOWN"},
		{"Get \"https://r.example/v2/a/blobs/sha256:ab\": EOF; open /var/lib/z/x: denied", "Get \"https://r.example/v2/a/blobs/sha256:ab\": EOF; open <path>: denied"},
	} {
		if got := redactPaths(tc.in); got != tc.want {
			t.Errorf("redactPaths(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
