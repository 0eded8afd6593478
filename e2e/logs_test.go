package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zygote/zygote/api/client"
	"github.com/zygote/zygote/internal/logfile"
	"github.com/zygote/zygote/internal/testutil"
)

// TestConsoleLogCappedAndReattached: with --log-max-size 64KB a guest
// printing 8× the cap to its console leaves console.log and console.1.log
// within it, `zygote logs` shows the newest lines, and a daemon killed
// with SIGKILL and restarted drains the adopted VM's console again.
func TestConsoleLogCappedAndReattached(t *testing.T) {
	d := newDaemon(t, testutil.XFS(t))
	d.args = []string{"--log-max-size", "64KB", "--log-files", "2"}
	d.start()
	in := d.run("chatty")
	d.sh("chatty", `i=0; while [ $i -lt 8192 ]; do echo "console flood line $i ......................................" ; i=$((i+1)); done > /dev/console; echo flood-done > /dev/console`)
	console := filepath.Join(d.instanceDir(in.ID), "console.log")
	logsShow := func(marker string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			var out bytes.Buffer
			if err := d.c.Logs(ctx, "chatty", client.LogOptions{Tail: 5}, &out); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out.String(), marker) {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("zygote logs never showed %q", marker)
	}
	logsShow("flood-done")
	for _, p := range []string{console, logfile.Rotated(console, 1)} {
		fi, err := os.Stat(p)
		if err != nil || fi.Size() > 64<<10 {
			t.Fatalf("%s: %v, want a file within the 64 KiB cap", p, err)
		}
	}
	if _, err := os.Stat(logfile.Rotated(console, 2)); err == nil {
		t.Fatal("a third console file: the cap is two")
	}
	d.kill9()
	d.start()
	d.waitRunning("chatty")
	d.sh("chatty", "echo after-daemon-restart > /dev/console")
	logsShow("after-daemon-restart")
}
