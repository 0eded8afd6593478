package api_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/zygote/zygote/clone"
	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/instances"
	"github.com/zygote/zygote/instances/instancestest"
)

// failingClone is a fake clone seam whose copies fail with err: a full
// disk or a source that changed under the copy cannot be provoked on
// demand here.
type failingClone struct {
	instances.Cloner
	err error
}

func (f failingClone) Dir(ctx context.Context, src, dst string) (clone.Stats, error) {
	return clone.Stats{}, fmt.Errorf("copy %s: %w", src, f.err)
}

// TestServerErrorStatuses provokes the error classes no bad request can:
// an internal failure, an unavailable manager, a full disk, a conflict.
func TestServerErrorStatuses(t *testing.T) {
	t.Run("internal", func(t *testing.T) {
		e := newEnv(t)
		e.h.Fake.FailNext("Boot", errors.New("injected boot failure"))
		resp, body := rawDo(t, "POST", e.url+"/instances", `{"name":"web"}`, nil)
		if resp.StatusCode != 500 || !strings.Contains(body, `"code":"internal_error"`) || resp.Header.Get("x-should-retry") != "false" {
			t.Fatalf("a boot failure: %d %s", resp.StatusCode, body)
		}
	})
	t.Run("unavailable", func(t *testing.T) {
		e := newEnv(t)
		e.h.M.Close()
		resp, body := rawDo(t, "POST", e.url+"/instances", `{"name":"web"}`, nil)
		if resp.StatusCode != 503 || !strings.Contains(body, `"code":"unavailable"`) {
			t.Fatalf("create on a closed manager: %d %s", resp.StatusCode, body)
		}
	})
	for _, tc := range []struct {
		name   string
		err    error
		status int
		code   string
	}{
		{"disk full", syscall.ENOSPC, 507, "insufficient_storage"},
		{"source changed under the copy", errdefs.ErrConflict, 409, "conflict"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnvWith(t, failingClone{Cloner: instancestest.NoClone, err: tc.err})
			e.run(t, "web")
			if _, err := e.c.StopInstance(ctx, "web"); err != nil {
				t.Fatal(err)
			}
			resp, body := rawDo(t, "POST", e.url+"/instances/web/snapshots", `{"kind":"Stopped"}`, nil)
			if resp.StatusCode != tc.status || !strings.Contains(body, `"code":"`+tc.code+`"`) {
				t.Fatalf("a snapshot whose copy fails with %v: %d %s", tc.err, resp.StatusCode, body)
			}
		})
	}
}
