package api_test

import (
	"strings"
	"testing"

	"github.com/zygote/zygote/api"
)

// TestSharingForkOverHTTP: memory "shared" makes a sharing fork whose
// Instance names its mode and its memory file's sharing group; an unknown
// mode is 400.
func TestSharingForkOverHTTP(t *testing.T) {
	e := newEnv(t)
	e.run(t, "src")
	f, err := e.c.ForkInstance(ctx, "src", api.ForkInstanceRequest{Name: "child", FromRunning: true, TargetState: "Standby", Memory: "shared"})
	if err != nil || f.Memory != "shared" || f.MemoryGroup == "" || f.MemoryLinks != 2 {
		t.Fatalf("sharing fork: %+v %v", f, err)
	}
	o, err := e.c.ForkInstance(ctx, "child", api.ForkInstanceRequest{Name: "owner", Memory: "owned"})
	if err != nil || o.Memory != "owned" || o.MemoryGroup == f.MemoryGroup || o.MemoryLinks != 1 {
		t.Fatalf("owning fork of a sharing fork: %+v %v", o, err)
	}
	resp, body := rawDo(t, "POST", e.url+"/instances/child/fork", `{"name":"bad","memory":"borrowed"}`, nil)
	if resp.StatusCode != 400 || !strings.Contains(body, "memory") {
		t.Fatalf("memory borrowed: %d %s", resp.StatusCode, body)
	}
}
