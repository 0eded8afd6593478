package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"time"

	"github.com/zygote/zygote/hypervisor"
	"github.com/zygote/zygote/internal/logfile"
)

// consoleSocket is where QEMU serves the guest's serial console. QEMU
// does not write console.log itself: a guest printing forever would fill
// the disk. The daemon drains the socket into a size-capped, rotated
// console.log instead. While no daemon is connected QEMU drops the output
// (a socket chardev with no client); a restarted daemon reconnects when
// it adopts the VMM.
const consoleSocket = "console.sock"

// consoleArgs: the serial console on a unix socket. wait=on makes QEMU
// wait for the daemon before it builds the machine, so no boot output is
// lost; later clients (an adopting daemon) connect as they come.
func consoleArgs(dir string) []string {
	return []string{
		"-chardev", fmt.Sprintf("socket,id=con0,path=%s,server=on,wait=on", optEscape(filepath.Join(dir, consoleSocket))),
		"-serial", "chardev:con0",
	}
}

// logCheckEvery is how often the drain caps vmm.log, which QEMU appends
// to itself (its stderr is the file, never a pipe: a reader that dies or
// stalls must not stop or kill QEMU).
const logCheckEvery = 2 * time.Second

// console drains one VMM's console socket into console.log and keeps
// vmm.log capped. Its goroutine ends when the VMM closes the socket or
// close is called.
type console struct {
	conn net.Conn
	out  *logfile.Writer
	done chan struct{}
	once sync.Once
}

// dialConsole connects to dir's console socket, retrying until ctx ends or
// the VMM exits, and starts draining it.
func dialConsole(ctx context.Context, dir string, limits logfile.Limits, exited <-chan struct{}, log *slog.Logger) (*console, error) {
	path := filepath.Join(dir, consoleSocket)
	var d net.Dialer
	var conn net.Conn
	for {
		var err error
		if conn, err = d.DialContext(ctx, "unix", path); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect console %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-exited:
			return nil, fmt.Errorf("connect console %s: the VMM exited", path)
		case <-time.After(5 * time.Millisecond):
		}
	}
	out, err := logfile.Open(filepath.Join(dir, hypervisor.ConsoleLog), limits)
	if err != nil {
		conn.Close()
		return nil, err
	}
	c := &console{conn: conn, out: out, done: make(chan struct{})}
	go c.drain(filepath.Join(dir, hypervisor.VMMLog), limits, log) // owner: c; close stops it
	return c, nil
}

func (c *console) drain(vmmLog string, limits logfile.Limits, log *slog.Logger) {
	defer close(c.done)
	defer c.out.Close()
	buf := make([]byte, 32<<10)
	lastCheck := time.Now()
	failing := false // log a write failure once, not once per read
	for {
		c.conn.SetReadDeadline(time.Now().Add(logCheckEvery))
		n, err := c.conn.Read(buf)
		if n > 0 {
			// Keep draining whatever happens: the guest must not stall.
			if _, werr := c.out.Write(buf[:n]); werr != nil && !failing {
				log.Warn("write console log: dropping console output until it works again", "err", werr)
				failing = true
			} else if werr == nil && failing {
				log.Info("console log writable again")
				failing = false
			}
		}
		if time.Since(lastCheck) >= logCheckEvery {
			lastCheck = time.Now()
			if _, err := logfile.CapAppended(vmmLog, limits); err != nil {
				log.Warn("cap vmm log", "err", err)
			}
		}
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			return // EOF: the VMM exited; or close
		}
	}
}

// close stops the drain and waits for it. Safe on nil and more than once.
func (c *console) close() {
	if c == nil {
		return
	}
	c.once.Do(func() { c.conn.Close() })
	<-c.done
}

// rotateVMMLog caps vmm.log before a launch appends to it.
func rotateVMMLog(dir string, limits logfile.Limits) {
	logfile.CapAppended(filepath.Join(dir, hypervisor.VMMLog), limits)
}
