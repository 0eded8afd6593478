package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/gorilla/websocket"

	"github.com/zygote/zygote/api"
)

// ExecOptions describe a command to run in a guest.
type ExecOptions struct {
	Command []string
	Env     map[string]string
	Cwd     string
	// TTY runs the command on a pseudo-terminal of Rows x Cols (0: the
	// guest's default, 24x80); Resize carries new sizes while it runs.
	TTY          bool
	Rows, Cols   uint32
	Resize       <-chan api.ExecResize
	Timeout      int32     // seconds, 0 = none
	WaitForAgent int32     // seconds
	Stdin        io.Reader // nil: no stdin (EOF at once)
	Stdout       io.Writer
	Stderr       io.Writer
}

// Exec runs a command in the guest and returns its exit code. Output is
// streamed as it comes; stdin is streamed until it ends.
func (c *Client) Exec(ctx context.Context, ref string, opt ExecOptions) (int, error) {
	d := websocket.Dialer{NetDialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return c.dialer(ctx) }}
	u := "ws" + strings.TrimPrefix(c.base, "http") + "/instances/" + esc(ref) + "/exec"
	hdr := http.Header{}
	if c.token != "" {
		hdr.Set("Authorization", "Bearer "+c.token)
	}
	conn, resp, err := d.DialContext(ctx, u, hdr)
	if err != nil {
		if resp != nil && resp.StatusCode >= 300 {
			defer resp.Body.Close()
			return -1, decodeError(resp)
		}
		return -1, fmt.Errorf("cannot reach the zygote daemon: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	first, _ := json.Marshal(api.ExecRequest{
		Command: opt.Command, Env: opt.Env, Cwd: opt.Cwd, TTY: opt.TTY, Rows: opt.Rows, Cols: opt.Cols,
		Timeout: opt.Timeout, WaitForAgent: opt.WaitForAgent, StreamTags: true,
	})
	if err := conn.WriteMessage(websocket.TextMessage, first); err != nil {
		return -1, err
	}
	// Output frames flow in while stdin and resize frames flow out; gorilla
	// allows one reader and one writer at a time: writes take wmu.
	var wmu sync.Mutex
	write := func(mt int, b []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		return conn.WriteMessage(mt, b)
	}
	done := make(chan struct{})
	defer close(done)
	if opt.TTY && opt.Resize != nil {
		go func() { // owner: Exec; ends when Exec returns
			for {
				select {
				case <-done:
					return
				case rs, ok := <-opt.Resize:
					if !ok {
						return
					}
					b, _ := json.Marshal(api.ExecControl{Resize: &rs})
					if write(websocket.TextMessage, b) != nil {
						return
					}
				}
			}
		}()
	}
	go func() { // owner: Exec; ends when stdin ends or the connection closes
		if opt.Stdin != nil {
			buf := make([]byte, 32<<10)
			for {
				n, err := opt.Stdin.Read(buf)
				if n > 0 {
					if write(websocket.BinaryMessage, buf[:n]) != nil {
						return
					}
				}
				if err != nil {
					break
				}
			}
		}
		eof, _ := json.Marshal(api.ExecControl{StdinEOF: true})
		write(websocket.TextMessage, eof)
	}()
	stdout, stderr := orDiscard(opt.Stdout), orDiscard(opt.Stderr)
	for {
		mt, raw, err := conn.ReadMessage()
		if err != nil {
			if ctx.Err() != nil {
				return -1, ctx.Err()
			}
			var ce *websocket.CloseError
			if errors.As(err, &ce) && ce.Code == websocket.CloseNormalClosure {
				return 0, nil // hypeman: a normal close without an exit frame is 0
			}
			return -1, fmt.Errorf("exec stream: %w", err)
		}
		switch mt {
		case websocket.BinaryMessage:
			if len(raw) == 0 {
				continue
			}
			w := stdout
			if raw[0] == api.StreamStderr {
				w = stderr
			}
			w.Write(raw[1:])
		case websocket.TextMessage:
			var exit struct {
				ExitCode *int   `json:"exitCode"`
				Error    string `json:"error"`
			}
			if json.Unmarshal(raw, &exit) != nil {
				continue
			}
			if exit.Error != "" {
				return -1, errors.New(exit.Error)
			}
			if exit.ExitCode != nil {
				return *exit.ExitCode, nil
			}
		}
	}
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
